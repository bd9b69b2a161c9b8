//! The generated impl: a static descriptor, row conversions and compile-time checks
//! of the field types.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Index};

use crate::ast::{Field, Model};
use crate::attr::{Algorithm, Errors};
use crate::check;

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let model = Model::parse(input, &mut errors);
    if let Some(model) = &model {
        check::check(model, &mut errors);
    }
    match (model, errors.finish()) {
        (Some(model), Ok(())) => expand(&model),
        (_, result) => {
            let mut tokens = result
                .err()
                .map_or_else(TokenStream::new, |e| e.to_compile_error());
            tokens.extend(fallback(input));
            tokens
        }
    }
}

fn expand(model: &Model<'_>) -> TokenStream {
    let ident = model.ident;
    let table = &model.table;
    let algorithm = match model.algorithm {
        Algorithm::Cls => quote!(::sync_runtime::Algorithm::Cls),
        Algorithm::Gos => quote!(::sync_runtime::Algorithm::Gos),
    };
    let stored: Vec<&Field<'_>> = model.stored().collect();
    let keys: Vec<&Field<'_>> = model.keys().collect();

    let columns = stored.iter().map(|f| {
        let (ty, name, key) = (f.ty, &f.column, f.is_key());
        let default = match &f.default {
            Some(d) => {
                let sql = &d.sql;
                quote!(::core::option::Option::Some(#sql))
            }
            None => quote!(::core::option::Option::None),
        };
        quote_spanned!(ty.span()=> ::sync_runtime::__private::column::<#ty>(#name, #key, #default))
    });

    let checks = stored.iter().map(|f| field_checks(f, keys.len() == 1));

    let values = stored.iter().enumerate().map(|(i, f)| {
        let field = f.ident;
        quote!(#i => ::sync_runtime::SyncValue::to_value_ref(&self.#field))
    });

    let (key_type, key_expr, key_values) = if let [key] = keys.as_slice() {
        let (ty, field) = (key.ty, key.ident);
        (
            quote!(#ty),
            quote!(::core::clone::Clone::clone(&self.#field)),
            quote!(0 => ::sync_runtime::SyncValue::to_value_ref(key),),
        )
    } else {
        let types = keys.iter().map(|k| k.ty);
        let fields = keys.iter().map(|k| k.ident);
        let values = (0..keys.len()).map(|i| {
            let index = Index::from(i);
            quote!(#i => ::sync_runtime::SyncValue::to_value_ref(&key.#index),)
        });
        (
            quote!((#(#types,)*)),
            quote!((#(::core::clone::Clone::clone(&self.#fields),)*)),
            quote!(#(#values)*),
        )
    };

    let reads = stored.iter().map(|f| {
        let (field, ty) = (f.ident, f.ty);
        quote!(#field: row.next::<#ty>()?)
    });
    let skipped = model.fields.iter().filter(|f| !f.is_stored()).map(|f| {
        let field = f.ident;
        quote_spanned!(f.ty.span()=> #field: ::core::default::Default::default())
    });

    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, clippy::all)]
        const _: () = {
            #(#checks)*

            const COLUMNS: &[::sync_runtime::ColumnSchema] = &[#(#columns),*];
            const SCHEMA: ::sync_runtime::TableSchema =
                ::sync_runtime::TableSchema::from_static(#table, #algorithm, COLUMNS);

            #[automatically_derived]
            impl ::sync_runtime::Synced for #ident {
                type Key = #key_type;

                const SCHEMA: &'static ::sync_runtime::TableSchema = &SCHEMA;

                fn column_value(&self, index: usize) -> ::sync_runtime::ValueRef<'_> {
                    match index {
                        #(#values,)*
                        _ => ::sync_runtime::ValueRef::Null,
                    }
                }

                fn key(&self) -> Self::Key {
                    #key_expr
                }

                fn key_value(key: &Self::Key, index: usize) -> ::sync_runtime::ValueRef<'_> {
                    match index {
                        #key_values
                        _ => ::sync_runtime::ValueRef::Null,
                    }
                }

                fn from_row(
                    row: &mut ::sync_runtime::RowReader<'_>,
                ) -> ::sync_runtime::Result<Self> {
                    ::core::result::Result::Ok(Self {
                        #(#reads,)*
                        #(#skipped,)*
                    })
                }
            }
        };
    }
}

/// Checks that need the field's type, evaluated by the compiler; each error points
/// at the field.
fn field_checks(field: &Field<'_>, single_key: bool) -> TokenStream {
    let ty = field.ty;
    let name = field.ident.to_string();
    let value = quote_spanned!(ty.span()=> <#ty as ::sync_runtime::SyncValue>);
    let mut checks = TokenStream::new();
    if field.is_key() {
        let message = format!("field `{name}` is a primary key and cannot be an Option");
        checks.extend(quote_spanned! {ty.span()=>
            const _: () = if #value::NULLABLE { ::core::panic!(#message) };
        });
        if single_key && field.integer_key.is_none() {
            let message = format!(
                "field `{name}` is a single integer primary key, which collides when devices create rows offline; \
                 use SyncId, or opt in with #[synced(primary_key, integer_key)]"
            );
            checks.extend(quote_spanned! {ty.span()=>
                const _: () = if ::core::matches!(#value::SQL_TYPE, ::sync_runtime::SqlType::Integer) {
                    ::core::panic!(#message)
                };
            });
        }
    } else if let Some(default) = &field.default {
        let expr = &default.expr;
        checks.extend(quote_spanned! {expr.span()=>
            const _: () = ::sync_runtime::__private::check_default::<#ty, _>(&#expr);
        });
    } else {
        let message = format!(
            "field `{name}` is NOT NULL and its type has no natural default; a row may arrive column by column, \
             so add #[synced(default = ...)] or make it an Option"
        );
        checks.extend(quote_spanned! {ty.span()=>
            const _: () = if !#value::NULLABLE && #value::DEFAULT_SQL.is_none() {
                ::core::panic!(#message)
            };
        });
    }
    checks
}

/// An impl that lets the rest of the user's code compile while the derive reports
/// its errors, so that only those errors show.
fn fallback(input: &DeriveInput) -> TokenStream {
    if !input.generics.params.is_empty() {
        return TokenStream::new();
    }
    let ident = &input.ident;
    quote! {
        const _: () = {
            #[automatically_derived]
            impl ::sync_runtime::Synced for #ident {
                type Key = ();
                const SCHEMA: &'static ::sync_runtime::TableSchema = &::sync_runtime::TableSchema::from_static(
                    "", ::sync_runtime::Algorithm::Cls, &[],
                );
                fn column_value(&self, _: usize) -> ::sync_runtime::ValueRef<'_> {
                    ::core::unreachable!()
                }
                fn key(&self) -> Self::Key {}
                fn key_value(_: &Self::Key, _: usize) -> ::sync_runtime::ValueRef<'_> {
                    ::core::unreachable!()
                }
                fn from_row(_: &mut ::sync_runtime::RowReader<'_>) -> ::sync_runtime::Result<Self> {
                    ::core::unreachable!()
                }
            }
        };
    }
}
