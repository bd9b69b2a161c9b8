//! `#[derive(Synced)]`: the derive of `sync-runtime`. Use it through
//! `sync_runtime::Synced`; the attributes are documented there.

mod ast;
mod attr;
mod check;
mod expand;
mod from_row;
mod value;

use proc_macro::TokenStream;

/// Derives `sync_runtime::Synced`; see the `sync-runtime` crate documentation.
#[proc_macro_derive(Synced, attributes(synced))]
pub fn derive_synced(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}

/// Derives `sync_runtime::FromRow` for a struct whose fields read the columns
/// of their names (`#[from_row(rename = "…")]` reads another); see the
/// `sync-runtime` crate documentation.
#[proc_macro_derive(FromRow, attributes(from_row))]
pub fn derive_from_row(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    from_row::derive(&input).into()
}

/// Derives `sync_runtime::SyncValue` for a unit enum (stored as its variants'
/// names, or with `#[sync_value(integer)]` their discriminants) or a newtype
/// (stored as what it wraps); see the `sync-runtime` crate documentation.
#[proc_macro_derive(SyncValue, attributes(sync_value))]
pub fn derive_sync_value(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    value::derive(&input).into()
}
