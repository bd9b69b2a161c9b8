//! Rules that look at the whole struct. Rules that depend on field types (supported
//! type, nullable key, default needed, integer key) are checked by the compiler on
//! the generated code, see `expand.rs`.

use std::collections::HashMap;

use crate::ast::Model;
use crate::attr::Errors;

const RESERVED_PREFIX: &str = "_synced";

pub(crate) fn check(model: &Model<'_>, errors: &mut Errors) {
    // A skipped key field is reported below; it is not also a missing key.
    if !model.fields.iter().any(|f| f.is_key()) {
        errors.push(syn::Error::new(
            model.span(),
            "a synced struct needs a primary key: mark its key field(s) with #[synced(primary_key)]",
        ));
    }
    if model.table.is_empty() || reserved(&model.table) || model.table.contains('.') {
        errors.push(syn::Error::new(
            model.table_span,
            format!(
                "table name `{}` is not allowed: it must be non-empty, contain no `.` and not start with `{RESERVED_PREFIX}`",
                model.table
            ),
        ));
    }
    let keys = model.keys().count();
    // SQLite compares column names without regard to ASCII case.
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for field in &model.fields {
        if let Some(skip) = field.skip {
            let conflicts: Vec<&str> = [
                (field.primary_key.is_some(), "`primary_key`"),
                (field.integer_key.is_some(), "`integer_key`"),
                (field.default.is_some(), "`default`"),
                (field.renamed, "`rename`"),
                (!field.renamed_from.is_empty(), "`renamed_from`"),
                (field.index.is_some(), "`index`"),
                (field.first_default.is_some(), "`first_default`"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if !conflicts.is_empty() {
                let conflicts = conflicts.join(" and ");
                errors.push(syn::Error::new(
                    skip,
                    format!(
                        "a skipped field has no column, so it cannot take {conflicts}; \
                         remove `skip` to store the field, or remove {conflicts}"
                    ),
                ));
            }
            continue;
        }
        if let Some(span) = field.integer_key
            && (field.primary_key.is_none() || keys > 1)
        {
            errors.push(syn::Error::new(
                span,
                "`integer_key` only applies to the field of a single-column #[synced(primary_key)]; \
                 integers in composite keys need no opt-in",
            ));
        }
        if let (Some(old), Some(_)) = (field.renamed_from.first(), field.primary_key) {
            errors.push(syn::Error::new(
                old.span(),
                "key columns cannot be renamed: the key is how every replica finds a row; keep \
                 the column's name with #[synced(rename = \"...\")] if the field's name changes",
            ));
        }
        if let (Some(span), Some(_)) = (field.index, field.primary_key) {
            errors.push(syn::Error::new(
                span,
                "key columns are indexed already: the primary key is an index",
            ));
        }
        if let (Some(first), Some(_)) = (&field.first_default, field.primary_key) {
            errors.push(syn::Error::new_spanned(
                &first.expr,
                "key columns take no default: every row carries its key",
            ));
        }
        if let (Some(default), Some(_)) = (&field.default, field.primary_key) {
            errors.push(syn::Error::new_spanned(
                &default.expr,
                "key columns take no default: every row carries its key",
            ));
        }
        if field.column.is_empty()
            || reserved(&field.column)
            || field.column.contains('.')
            || ["rowid", "oid", "_rowid_"]
                .iter()
                .any(|alias| field.column.eq_ignore_ascii_case(alias))
        {
            errors.push(syn::Error::new(
                field.column_span,
                format!(
                    "column name `{}` is not allowed: it must be non-empty, contain no `.`, not start with `{RESERVED_PREFIX}` and not be `rowid`, `oid` or `_rowid_`",
                    field.column
                ),
            ));
        }
        if let Some(first) = seen.insert(field.column.to_ascii_lowercase(), field.ident) {
            errors.push(syn::Error::new(
                field.column_span,
                format!(
                    "duplicate column name `{}`: field `{first}` already uses it; rename one with #[synced(rename = \"...\")]",
                    field.column
                ),
            ));
        }
    }
}

fn reserved(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(RESERVED_PREFIX))
}
