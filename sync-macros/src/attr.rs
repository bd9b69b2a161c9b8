//! Parsing of `#[synced(...)]` attributes.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Lit, LitStr, UnOp};

pub(crate) const SYNCED: &str = "synced";

pub(crate) const TABLE: &str = "table";
pub(crate) const ALGORITHM: &str = "algorithm";
pub(crate) const PATCH: &str = "patch";
const STRUCT_KEYS: &str = "`table`, `algorithm`, `patch`";

pub(crate) const PRIMARY_KEY: &str = "primary_key";
pub(crate) const INTEGER_KEY: &str = "integer_key";
pub(crate) const RENAME: &str = "rename";
pub(crate) const DEFAULT: &str = "default";
pub(crate) const SKIP: &str = "skip";
pub(crate) const COUNTER: &str = "counter";
pub(crate) const RENAMED_FROM: &str = "renamed_from";
pub(crate) const INDEX: &str = "index";
pub(crate) const FIRST_DEFAULT: &str = "first_default";
const FIELD_KEYS: &str = "`primary_key`, `integer_key`, `rename`, `renamed_from`, `default`, \
     `first_default`, `index`, `skip`, `counter`";

/// The merge algorithms the runtime implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Cls,
    Gos,
}

/// Struct-level attributes.
#[derive(Default)]
pub(crate) struct StructAttrs {
    pub(crate) table: Option<LitStr>,
    pub(crate) algorithm: Option<(Algorithm, Span)>,
    /// The name of the generated patch type.
    pub(crate) patch: Option<syn::Ident>,
}

/// A default value, already rendered as an SQL literal, with the Rust literal for
/// the type check.
pub(crate) struct DefaultValue {
    pub(crate) sql: String,
    pub(crate) expr: Expr,
}

impl DefaultValue {
    /// The literal after `default =` or `first_default =`.
    fn parse(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Self> {
        let expr: Expr = meta.value()?.parse()?;
        Ok(Self {
            sql: sql_literal(&expr)?,
            expr,
        })
    }
}

/// Field-level attributes.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    pub(crate) primary_key: Option<Span>,
    pub(crate) integer_key: Option<Span>,
    pub(crate) rename: Option<LitStr>,
    pub(crate) default: Option<DefaultValue>,
    pub(crate) skip: Option<Span>,
    /// Earlier names of the column, oldest first (the attribute may repeat).
    pub(crate) renamed_from: Vec<LitStr>,
    /// The column is indexed.
    pub(crate) index: Option<Span>,
    /// The default the column was added with, if it changed since.
    pub(crate) first_default: Option<DefaultValue>,
}

/// Collects errors so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

fn synced_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident(SYNCED))
}

/// Stores an attribute's value, refusing a second occurrence of the same key.
fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!(
            "duplicate `{}` attribute; give it once",
            path_name(&meta.path)
        )));
    }
    *slot = Some(value);
    Ok(())
}

pub(crate) fn struct_attrs(attrs: &[Attribute], errors: &mut Errors) -> StructAttrs {
    let mut out = StructAttrs::default();
    for attr in synced_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(TABLE) {
                let table = meta.value()?.parse()?;
                set_once(&mut out.table, table, &meta)?;
            } else if meta.path.is_ident(PATCH) {
                let name: LitStr = meta.value()?.parse()?;
                set_once(&mut out.patch, name.parse()?, &meta)?;
            } else if meta.path.is_ident(ALGORITHM) {
                let lit: LitStr = meta.value()?.parse()?;
                let algorithm = match lit.value().as_str() {
                    "cls" => Algorithm::Cls,
                    "gos" => Algorithm::Gos,
                    "dws" | "aws" => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "algorithm `{}` is not yet supported; use `cls` or `gos`",
                                lit.value()
                            ),
                        ));
                    }
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown algorithm `{other}`; expected `cls` (default) or `gos`"
                            ),
                        ));
                    }
                };
                set_once(&mut out.algorithm, (algorithm, lit.span()), &meta)?;
            } else {
                return Err(meta.error(format!(
                    "unknown attribute `{}`; expected one of {STRUCT_KEYS}",
                    path_name(&meta.path)
                )));
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    out
}

pub(crate) fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for attr in synced_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            let span = meta.path.span();
            if meta.path.is_ident(PRIMARY_KEY) {
                set_once(&mut out.primary_key, span, &meta)?;
            } else if meta.path.is_ident(INTEGER_KEY) {
                set_once(&mut out.integer_key, span, &meta)?;
            } else if meta.path.is_ident(FIRST_DEFAULT) {
                let default = DefaultValue::parse(&meta)?;
                set_once(&mut out.first_default, default, &meta)?;
            } else if meta.path.is_ident(INDEX) {
                set_once(&mut out.index, span, &meta)?;
            } else if meta.path.is_ident(SKIP) {
                set_once(&mut out.skip, span, &meta)?;
            } else if meta.path.is_ident(RENAME) {
                let rename = meta.value()?.parse()?;
                set_once(&mut out.rename, rename, &meta)?;
            } else if meta.path.is_ident(RENAMED_FROM) {
                out.renamed_from.push(meta.value()?.parse()?);
            } else if meta.path.is_ident(DEFAULT) {
                let default = DefaultValue::parse(&meta)?;
                set_once(&mut out.default, default, &meta)?;
            } else if meta.path.is_ident(COUNTER) {
                return Err(meta.error(
                    "counter columns are not yet supported; remove `counter` to make this a \
                     last-writer-wins column for now",
                ));
            } else {
                return Err(meta.error(format!(
                    "unknown attribute `{}`; expected one of {FIELD_KEYS}",
                    path_name(&meta.path)
                )));
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    out
}

fn path_name(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// Renders a default literal as SQL: `false` → `0`, `-3` → `-3`, `"a'b"` → `'a''b'`,
/// `b"\x01"` → `x'01'`.
fn sql_literal(expr: &Expr) -> syn::Result<String> {
    let unsupported = || {
        syn::Error::new_spanned(
            expr,
            "a default must be a literal: `false`, `0`, `-1`, `1.5`, `\"text\"` or `b\"bytes\"`",
        )
    };
    if let Expr::Path(path) = expr
        && is_none(path)
    {
        // `NULL`, for an `Option` field (checked where the field's type is known).
        return Ok("NULL".to_owned());
    }
    match signed_literal(expr).ok_or_else(unsupported)? {
        (false, Lit::Bool(b)) => Ok(if b.value { "1" } else { "0" }.to_owned()),
        (false, Lit::Str(s)) => Ok(format!("'{}'", s.value().replace('\'', "''"))),
        (false, Lit::ByteStr(b)) => Ok(format!(
            "x'{}'",
            b.value()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        )),
        (negative, Lit::Int(i)) => Ok(format!("{}{}", sign(negative), i.base10_digits())),
        (negative, Lit::Float(f)) => Ok(format!(
            "{}{}",
            sign(negative),
            float_sql(f.base10_digits())
        )),
        _ => Err(unsupported()),
    }
}

/// A literal, or a negated one (`-3`, `-1.5`): whether it is negated, and the
/// literal; `None` for any other expression.
pub(crate) fn signed_literal(expr: &Expr) -> Option<(bool, &Lit)> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some((false, lit)),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr: inner,
            ..
        }) => match inner.as_ref() {
            Expr::Lit(ExprLit { lit, .. }) => Some((true, lit)),
            _ => None,
        },
        _ => None,
    }
}

fn sign(negative: bool) -> &'static str {
    if negative { "-" } else { "" }
}

/// Whether a default is written `None`.
pub(crate) fn is_none(path: &syn::ExprPath) -> bool {
    path.qself.is_none() && path.path.is_ident("None")
}

/// SQLite reads `1` as an integer; a REAL default keeps its decimal point.
fn float_sql(digits: &str) -> String {
    if digits.contains(['.', 'e', 'E']) {
        digits.to_owned()
    } else {
        format!("{digits}.0")
    }
}
