//! `#[derive(FromRow)]`: a struct made from a row of a read's result, each
//! field from the column of its name.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr};

/// The derive's output, or the errors that stop it.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    expand(input).unwrap_or_else(syn::Error::into_compile_error)
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(FromRow)] takes no generic parameters",
        ));
    }
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => &named.named,
            _ => {
                return Err(syn::Error::new(
                    ident.span(),
                    "#[derive(FromRow)] needs named fields, which name the columns they read",
                ));
            }
        },
        _ => {
            return Err(syn::Error::new(
                ident.span(),
                "#[derive(FromRow)] can only be used on structs",
            ));
        }
    };
    let mut reads = Vec::new();
    for field in fields {
        let Some(name) = &field.ident else { continue };
        let mut column = syn::ext::IdentExt::unraw(name).to_string();
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("from_row")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    let rename: LitStr = meta.value()?.parse()?;
                    column = rename.value();
                    Ok(())
                } else {
                    let name = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
                    Err(meta.error(format!(
                        "unknown `from_row` attribute `{name}`; the one there is: `rename = \"column\"`"
                    )))
                }
            })?;
        }
        let ty = &field.ty;
        reads.push(quote_spanned! {ty.span()=>
            #name: row.get::<#ty>(#column)?
        });
    }
    Ok(quote! {
        #[automatically_derived]
        impl ::sync_runtime::FromRow for #ident {
            fn from_row(
                row: &::sync_runtime::ResultRow<'_>,
            ) -> ::sync_runtime::Result<Self> {
                ::core::result::Result::Ok(Self { #(#reads,)* })
            }
        }
    })
}
