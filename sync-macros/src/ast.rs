//! The parsed model of a `#[derive(Synced)]` struct.

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{self, Algorithm, DefaultValue, Errors};

/// A struct that derives `Synced`.
pub(crate) struct Model<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a syn::Visibility,
    /// The generated patch type's name.
    pub(crate) patch: Ident,
    pub(crate) table: String,
    /// Where the table name comes from, for errors.
    pub(crate) table_span: Span,
    pub(crate) algorithm: Algorithm,
    pub(crate) fields: Vec<Field<'a>>,
}

/// One named field.
pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) vis: &'a syn::Visibility,
    pub(crate) ty: &'a Type,
    /// The column's name (the field's name unless renamed).
    pub(crate) column: String,
    /// Where the column name comes from, for errors.
    pub(crate) column_span: Span,
    /// Whether the column name comes from `rename`.
    pub(crate) renamed: bool,
    pub(crate) primary_key: Option<Span>,
    pub(crate) integer_key: Option<Span>,
    pub(crate) default: Option<DefaultValue>,
    pub(crate) skip: Option<Span>,
    /// Earlier names of the column, oldest first.
    pub(crate) renamed_from: Vec<syn::LitStr>,
    /// `#[synced(index)]`.
    pub(crate) index: Option<Span>,
    /// `#[synced(first_default = …)]`.
    pub(crate) first_default: Option<DefaultValue>,
}

impl Field<'_> {
    pub(crate) fn is_stored(&self) -> bool {
        self.skip.is_none()
    }

    pub(crate) fn is_key(&self) -> bool {
        self.primary_key.is_some()
    }
}

impl<'a> Model<'a> {
    /// Parses the struct and its attributes; problems found on the way are pushed
    /// to `errors` and parsing goes on where it can.
    pub(crate) fn parse(input: &'a DeriveInput, errors: &mut Errors) -> Option<Self> {
        let attrs = attr::struct_attrs(&input.attrs, errors);
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                "`#[derive(Synced)]` does not support generic structs: a table has one fixed set of \
                 column types; remove the generic parameters and use concrete field types",
            ));
        }
        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named,
                fields => {
                    let span = match fields {
                        Fields::Unnamed(unnamed) => unnamed.paren_token.span.join(),
                        _ => input.ident.span(),
                    };
                    errors.push(syn::Error::new(
                        span,
                        "`#[derive(Synced)]` needs a struct with named fields, which name its columns: \
                         `struct Name { field: Type, ... }`",
                    ));
                    return None;
                }
            },
            _ => {
                errors.push(syn::Error::new(
                    input.ident.span(),
                    "`#[derive(Synced)]` can only be used on structs",
                ));
                return None;
            }
        };
        let fields = named
            .named
            .iter()
            .filter_map(|f| {
                let ident = f.ident.as_ref()?;
                let attrs = attr::field_attrs(&f.attrs, errors);
                let (column, column_span) = match &attrs.rename {
                    Some(lit) => (lit.value(), lit.span()),
                    None => (ident.unraw().to_string(), ident.span()),
                };
                Some(Field {
                    ident,
                    vis: &f.vis,
                    ty: &f.ty,
                    renamed: attrs.rename.is_some(),
                    column,
                    column_span,
                    primary_key: attrs.primary_key,
                    integer_key: attrs.integer_key,
                    default: attrs.default,
                    skip: attrs.skip,
                    renamed_from: attrs.renamed_from,
                    index: attrs.index,
                    first_default: attrs.first_default,
                })
            })
            .collect();
        let (table, table_span) = match &attrs.table {
            Some(lit) => (lit.value(), lit.span()),
            None => (snake_case(&input.ident.to_string()), input.ident.span()),
        };
        let patch = attrs
            .patch
            .clone()
            .unwrap_or_else(|| quote::format_ident!("{}Patch", input.ident));
        Some(Model {
            ident: &input.ident,
            vis: &input.vis,
            patch,
            table,
            table_span,
            algorithm: attrs.algorithm.map_or(Algorithm::Cls, |(a, _)| a),
            fields,
        })
    }

    pub(crate) fn stored(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|f| f.is_stored())
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Field<'a>> {
        self.stored().filter(|f| f.is_key())
    }

    pub(crate) fn span(&self) -> Span {
        self.ident.span()
    }
}

/// `TodoItem` → `todo_item`, `HTTPServer` → `http_server`, `Item2` → `item2`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &ch) in chars.iter().enumerate() {
        if ch.is_uppercase() && i > 0 {
            let previous = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|c| c.is_lowercase());
            // A word starts after a lowercase letter or digit, or at the last capital
            // of an acronym that a lowercase word follows.
            if previous.is_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.extend(ch.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn snake_case() {
        assert_eq!(super::snake_case("TodoItem"), "todo_item");
        assert_eq!(super::snake_case("Todo"), "todo");
        assert_eq!(super::snake_case("HTTPServer"), "http_server");
        assert_eq!(super::snake_case("UserID"), "user_id");
        assert_eq!(super::snake_case("Item2Tag"), "item2_tag");
    }
}
