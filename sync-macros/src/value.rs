//! `#[derive(SyncValue)]`: unit enums stored as their variants' names (TEXT)
//! or discriminants (INTEGER), and newtypes stored as what they wrap.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, Lit, LitStr};

/// How a unit enum is stored.
#[derive(Clone, Copy, PartialEq)]
enum Storage {
    Text,
    Integer,
}

/// One variant as stored.
struct Variant {
    ident: syn::Ident,
    name: String,
    discriminant: i64,
    default: bool,
}

/// The derive's output, or the errors that stop it.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let result = match &input.data {
        Data::Enum(data) => enum_value(input, data),
        Data::Struct(data) => newtype(input, &data.fields),
        Data::Union(_) => Err(syn::Error::new(
            input.ident.span(),
            "#[derive(SyncValue)] takes a unit enum or a newtype struct, not a union",
        )),
    };
    result.unwrap_or_else(syn::Error::into_compile_error)
}

fn storage(input: &DeriveInput) -> syn::Result<Storage> {
    let mut storage = Storage::Text;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("sync_value"))
    {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("text") {
                storage = Storage::Text;
            } else if meta.path.is_ident("integer") {
                storage = Storage::Integer;
            } else {
                return Err(meta.error("expected `text` or `integer`"));
            }
            Ok(())
        })?;
    }
    Ok(storage)
}

fn variant_name(variant: &syn::Variant) -> syn::Result<String> {
    let mut name = variant.ident.to_string();
    for attr in variant
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("sync_value"))
    {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let rename: LitStr = meta.value()?.parse()?;
                name = rename.value();
                Ok(())
            } else {
                Err(meta.error("expected `rename = \"...\"`"))
            }
        })?;
    }
    Ok(name)
}

fn discriminant(expr: &Expr) -> syn::Result<i64> {
    match crate::attr::signed_literal(expr) {
        // Parsed with its sign, so that `i64::MIN`, whose magnitude is not
        // an `i64`, is one too.
        Some((negative, Lit::Int(i))) => {
            let sign = if negative { "-" } else { "" };
            format!("{sign}{}", i.base10_digits())
                .parse::<i64>()
                .map_err(|_| syn::Error::new_spanned(expr, "a discriminant must fit an i64"))
        }
        _ => Err(syn::Error::new_spanned(
            expr,
            "a discriminant must be an integer literal",
        )),
    }
}

fn enum_value(input: &DeriveInput, data: &syn::DataEnum) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(SyncValue)] takes no generic parameters",
        ));
    }
    if data.variants.is_empty() {
        return Err(syn::Error::new(
            ident.span(),
            "an enum without variants has no value to store",
        ));
    }
    let storage = storage(input)?;
    let mut variants = Vec::new();
    let mut next = 0i64;
    for variant in &data.variants {
        if !matches!(variant.fields, Fields::Unit) {
            return Err(syn::Error::new(
                variant.span(),
                "#[derive(SyncValue)] stores unit variants only: a variant with fields has no \
                 single column value",
            ));
        }
        let discriminant = match &variant.discriminant {
            Some((_, expr)) => discriminant(expr)?,
            None => next,
        };
        next = discriminant.wrapping_add(1);
        let name = variant_name(variant)?;
        if let Some(twice) = variants.iter().find(|v: &&Variant| match storage {
            Storage::Text => v.name == name,
            Storage::Integer => v.discriminant == discriminant,
        }) {
            return Err(syn::Error::new(
                variant.ident.span(),
                format!(
                    "variants `{}` and `{}` would be stored as the same value",
                    twice.ident, variant.ident
                ),
            ));
        }
        variants.push(Variant {
            ident: variant.ident.clone(),
            name,
            discriminant,
            default: variant.attrs.iter().any(|a| a.path().is_ident("default")),
        });
    }
    let type_name = ident.to_string();
    let default = variants.iter().find(|v| v.default);
    let (sql_type, literal, default_sql, to, from) = match storage {
        Storage::Text => {
            let to = variants.iter().map(|v| {
                let (variant, name) = (&v.ident, &v.name);
                quote!(#ident::#variant => ::sync_runtime::ValueRef::Text(#name))
            });
            let from = variants.iter().map(|v| {
                let (variant, name) = (&v.ident, &v.name);
                quote!(#name => ::core::result::Result::Ok(#ident::#variant))
            });
            let default_sql = default.map(|v| format!("'{}'", v.name.replace('\'', "''")));
            (
                quote!(::sync_runtime::SqlType::Text),
                quote!(&'static str),
                default_sql,
                quote!(match self { #(#to,)* }),
                quote! {
                    match value {
                        ::sync_runtime::ValueRef::Text(text) => match text {
                            #(#from,)*
                            other => ::core::result::Result::Err(
                                ::sync_runtime::value::ValueError::UnknownVariant {
                                    value: ::std::format!("{other:?}"),
                                    target: #type_name,
                                },
                            ),
                        },
                        other => ::core::result::Result::Err(
                            ::sync_runtime::value::ValueError::WrongType {
                                expected: "TEXT",
                                found: other.type_name(),
                            },
                        ),
                    }
                },
            )
        }
        Storage::Integer => {
            let to = variants.iter().map(|v| {
                let (variant, value) = (&v.ident, v.discriminant);
                quote!(#ident::#variant => ::sync_runtime::ValueRef::Integer(#value))
            });
            let from = variants.iter().map(|v| {
                let (variant, value) = (&v.ident, v.discriminant);
                quote!(#value => ::core::result::Result::Ok(#ident::#variant))
            });
            let default_sql = default.map(|v| v.discriminant.to_string());
            (
                quote!(::sync_runtime::SqlType::Integer),
                quote!(i64),
                default_sql,
                quote!(match self { #(#to,)* }),
                quote! {
                    match value {
                        ::sync_runtime::ValueRef::Integer(integer) => match integer {
                            #(#from,)*
                            other => ::core::result::Result::Err(
                                ::sync_runtime::value::ValueError::UnknownVariant {
                                    value: ::std::format!("{other}"),
                                    target: #type_name,
                                },
                            ),
                        },
                        other => ::core::result::Result::Err(
                            ::sync_runtime::value::ValueError::WrongType {
                                expected: "INTEGER",
                                found: other.type_name(),
                            },
                        ),
                    }
                },
            )
        }
    };
    let default_sql = match default_sql {
        Some(sql) => quote!(::core::option::Option::Some(#sql)),
        None => quote!(::core::option::Option::None),
    };
    Ok(quote! {
        impl ::sync_runtime::SyncValue for #ident {
            const SQL_TYPE: ::sync_runtime::SqlType = #sql_type;
            const DEFAULT_SQL: ::core::option::Option<&'static str> = #default_sql;

            fn to_value_ref(&self) -> ::sync_runtime::ValueRef<'_> {
                #to
            }

            fn from_value_ref(
                value: ::sync_runtime::ValueRef<'_>,
            ) -> ::core::result::Result<Self, ::sync_runtime::value::ValueError> {
                #from
            }
        }

        impl ::sync_runtime::__private::DefaultLiteral for #ident {
            type Literal = #literal;
        }
    })
}

fn newtype(input: &DeriveInput, fields: &Fields) -> syn::Result<TokenStream> {
    let ident = &input.ident;
    let inner = match fields {
        Fields::Unnamed(fields) if fields.unnamed.len() == 1 => &fields.unnamed[0].ty,
        _ => {
            return Err(syn::Error::new(
                ident.span(),
                "#[derive(SyncValue)] takes a newtype struct (one unnamed field, \
                 `struct Email(String);`) or a unit enum",
            ));
        }
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(SyncValue)] takes no generic parameters",
        ));
    }
    Ok(quote! {
        impl ::sync_runtime::SyncValue for #ident {
            const SQL_TYPE: ::sync_runtime::SqlType =
                <#inner as ::sync_runtime::SyncValue>::SQL_TYPE;
            const NULLABLE: bool = <#inner as ::sync_runtime::SyncValue>::NULLABLE;
            const DEFAULT_SQL: ::core::option::Option<&'static str> =
                <#inner as ::sync_runtime::SyncValue>::DEFAULT_SQL;
            const DOMAIN: ::sync_runtime::Domain = <#inner as ::sync_runtime::SyncValue>::DOMAIN;

            fn to_value_ref(&self) -> ::sync_runtime::ValueRef<'_> {
                ::sync_runtime::SyncValue::to_value_ref(&self.0)
            }

            fn from_value_ref(
                value: ::sync_runtime::ValueRef<'_>,
            ) -> ::core::result::Result<Self, ::sync_runtime::value::ValueError> {
                <#inner as ::sync_runtime::SyncValue>::from_value_ref(value).map(#ident)
            }
        }

        impl ::sync_runtime::__private::DefaultLiteral for #ident {
            type Literal = <#inner as ::sync_runtime::__private::DefaultLiteral>::Literal;
        }
    })
}
