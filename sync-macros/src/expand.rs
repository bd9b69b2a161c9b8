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
        let (name, key) = (&f.column, f.is_key());
        let value = sync_value(f);
        let default = match &f.default {
            Some(d) => {
                let sql = &d.sql;
                quote!(::core::option::Option::Some(#sql))
            }
            None => quote!(::core::option::Option::None),
        };
        let renamed_from = f.renamed_from.iter();
        let indexed = f.index.is_some();
        let first_default = match &f.first_default {
            Some(d) => {
                let sql = &d.sql;
                quote!(::core::option::Option::Some(#sql))
            }
            None => quote!(::core::option::Option::None),
        };
        quote! {
            ::sync_runtime::__private::column(
                #name, #key, #default, #value::SQL_TYPE, #value::NULLABLE, #value::DEFAULT_SQL,
                &[#(::std::borrow::Cow::Borrowed(#renamed_from)),*], #first_default, #indexed,
            )
        }
    });

    let checks = stored.iter().map(|f| field_checks(f, keys.len() == 1));
    let key_domains = keys.iter().map(|k| {
        let value = sync_value(k);
        quote!(#value::DOMAIN)
    });

    let values = stored.iter().enumerate().map(|(i, f)| {
        let (field, value) = (f.ident, sync_value(f));
        quote!(#i => #value::to_value_ref(&self.#field))
    });

    let (key_type, key_expr, key_values) = if let [key] = keys.as_slice() {
        let (ty, value) = (key.ty, sync_value(key));
        (
            quote!(#ty),
            clone_field(key),
            quote!(0 => #value::to_value_ref(key),),
        )
    } else {
        let types = keys.iter().map(|k| k.ty);
        let clones = keys.iter().map(|k| clone_field(k));
        let values = keys.iter().enumerate().map(|(i, k)| {
            let (index, value) = (Index::from(i), sync_value(k));
            quote!(#i => #value::to_value_ref(&key.#index),)
        });
        (
            quote!((#(#types,)*)),
            quote!((#(#clones,)*)),
            quote!(#(#values)*),
        )
    };

    // `RowReader::read` bounds its type by `SyncValue`. Naming each type through
    // the trait first makes the compiler report an unsupported type once, like the
    // other uses, instead of adding an error that points at the derive and into
    // sync-runtime.
    let witnesses = stored.iter().map(|f| {
        let value = sync_value(f);
        quote!(let _ = #value::SQL_TYPE;)
    });
    let reads = stored.iter().map(|f| {
        let (field, ty) = (f.ident, f.ty);
        quote!(#field: row.read::<#ty>()?)
    });
    let skipped = model.fields.iter().filter(|f| !f.is_stored()).map(|f| {
        let field = f.ident;
        quote_spanned!(f.ty.span()=> #field: ::core::default::Default::default())
    });

    let patch = patch(model, &stored);

    quote! {
        #patch

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

                const KEY_DOMAINS: &'static [::sync_runtime::Domain] = &[#(#key_domains),*];

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
                    #(#witnesses)*
                    ::core::result::Result::Ok(Self {
                        #(#reads,)*
                        #(#skipped,)*
                    })
                }
            }
        };
    }
}

/// The patch type of the model: an `Option` per value column, written by
/// `SyncDb::patch` for the fields set to `Some`.
fn patch(model: &Model<'_>, stored: &[&Field<'_>]) -> TokenStream {
    let (ident, name, vis) = (model.ident, &model.patch, model.vis);
    let values: Vec<(usize, &Field<'_>)> = stored
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.is_key())
        .map(|(i, f)| (i, *f))
        .collect();
    let doc = format!(
        "Changes to some columns of a [`{ident}`] row, without reading it first: each field \
         set to `Some` is written, and only those (see `SyncDb::patch`). Generated by \
         `#[derive(Synced)]`."
    );
    let fields = values.iter().map(|(_, f)| {
        let (field, ty, vis) = (f.ident, f.ty, f.vis);
        let doc = format!("The new value of `{}`, if it changes.", f.column);
        quote!(#[doc = #doc] #vis #field: ::core::option::Option<#ty>)
    });
    let nones = values.iter().map(|(_, f)| {
        let field = f.ident;
        quote!(#field: ::core::option::Option::None)
    });
    let sets = values.iter().map(|(i, f)| {
        let (field, value) = (f.ident, sync_value(f));
        quote! {
            if let ::core::option::Option::Some(value) = &self.#field {
                out.push((#i, #value::to_value_ref(value)));
            }
        }
    });
    quote! {
        #[doc = #doc]
        // Generated for every model; an app that never patches does not use it.
        #[allow(dead_code)]
        #vis struct #name {
            #(#fields,)*
        }

        #[automatically_derived]
        impl ::core::default::Default for #name {
            fn default() -> Self {
                Self { #(#nones,)* }
            }
        }

        #[automatically_derived]
        impl ::sync_runtime::Patch for #name {
            type Row = #ident;

            fn values(&self) -> ::std::vec::Vec<(usize, ::sync_runtime::ValueRef<'_>)> {
                let mut out = ::std::vec::Vec::new();
                #(#sets)*
                out
            }
        }
    }
}

/// `<T as ::sync_runtime::SyncValue>` for a field's type, spanned at the type.
///
/// Every use of a field type's `SyncValue` impl goes through this qualified path
/// (never through the bound of a generic function), so that the compiler's errors
/// for an unsupported type are all the same error at the same place, which it
/// reports once.
fn sync_value(field: &Field<'_>) -> TokenStream {
    let ty = field.ty;
    quote_spanned!(ty.span()=> <#ty as ::sync_runtime::SyncValue>)
}

/// A copy of a key field, for `Synced::key`.
fn clone_field(field: &Field<'_>) -> TokenStream {
    let ident = field.ident;
    quote_spanned!(field.ty.span()=> ::core::clone::Clone::clone(&self.#ident))
}

/// Checks that need the field's type, evaluated by the compiler; each error points
/// at the field's type or at its default.
fn field_checks(field: &Field<'_>, single_key: bool) -> TokenStream {
    let ty = field.ty;
    let name = field.ident.to_string();
    let value = sync_value(field);
    let mut checks = TokenStream::new();
    let message = format!(
        "field `{name}` cannot be an Option of an Option: NULL cannot tell Some(None) from None"
    );
    checks.extend(quote_spanned! {ty.span()=>
        const _: () = if #value::NESTED_OPTION { ::core::panic!(#message) };
    });
    if field.is_key() {
        let message = format!(
            "field `{name}` is part of the primary key and cannot be an Option: \
             key columns are never NULL; use the inner type"
        );
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
        if let Some(span) = field.integer_key {
            let message = format!(
                "`integer_key` opts in to an integer primary key, but field `{name}` is not an integer; remove it"
            );
            checks.extend(quote_spanned! {span=>
                const _: () = if !::core::matches!(#value::SQL_TYPE, ::sync_runtime::SqlType::Integer) {
                    ::core::panic!(#message)
                };
            });
        }
        return checks;
    }
    if let Some(first) = &field.first_default {
        checks.extend(literal_check(ty, &first.expr));
    }
    if let Some(default) = &field.default {
        checks.extend(literal_check(ty, &default.expr));
    } else {
        let message = format!(
            "field `{name}` needs a column default: a row may arrive column by column, so every NOT NULL \
             column needs one, and `{}` has no natural default; make the field an Option, or give it \
             #[synced(default = ...)] if its type takes a literal",
            type_name(ty),
        );
        checks.extend(quote_spanned! {ty.span()=>
            const _: () = if !#value::NULLABLE && #value::DEFAULT_SQL.is_none() {
                ::core::panic!(#message)
            };
        });
    }
    checks
}

/// A typed constant of a default: a literal of the wrong type is a type
/// mismatch at the literal, an out-of-range integer a compile error, and
/// `None` compiles for an `Option` field only.
fn literal_check(ty: &syn::Type, expr: &syn::Expr) -> TokenStream {
    match expr {
        syn::Expr::Path(path) if crate::attr::is_none(path) => quote_spanned! {expr.span()=>
            const _: #ty = ::core::option::Option::None;
        },
        _ => quote_spanned! {expr.span()=>
            const _: <#ty as ::sync_runtime::__private::DefaultLiteral>::Literal = #expr;
        },
    }
}

/// A type as written, for messages: `sync_runtime::SyncId`, `Vec<u8>`.
fn type_name(ty: &syn::Type) -> String {
    quote!(#ty)
        .to_string()
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" <", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
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

/// Snapshots of the generated code, so that every change to it is reviewed.
#[cfg(test)]
mod tests {
    use syn::parse_quote;

    fn expand(input: syn::DeriveInput) -> String {
        let file: syn::File = syn::parse2(super::derive(&input)).expect("the expansion parses");
        prettyplease::unparse(&file)
    }

    #[test]
    fn single_key() {
        insta::assert_snapshot!(expand(parse_quote! {
            #[synced(table = "todos")]
            struct Todo {
                #[synced(primary_key)]
                id: SyncId,
                title: String,
                #[synced(default = false)]
                done: bool,
                note: Option<String>,
                #[synced(skip)]
                cache: Vec<String>,
            }
        }));
    }

    #[test]
    fn composite_key_grow_only() {
        insta::assert_snapshot!(expand(parse_quote! {
            #[synced(algorithm = "gos")]
            struct ListItem {
                #[synced(primary_key)]
                list: SyncId,
                #[synced(primary_key, rename = "pos")]
                position: i64,
                #[synced(default = "untitled")]
                label: String,
            }
        }));
    }
}
