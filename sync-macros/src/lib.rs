//! `#[derive(Synced)]`: the derive of `sync-runtime`. Use it through
//! `sync_runtime::Synced`; the attributes are documented there.

mod ast;
mod attr;
mod check;
mod expand;

use proc_macro::TokenStream;

/// Derives `sync_runtime::Synced`; see the `sync-runtime` crate documentation.
#[proc_macro_derive(Synced, attributes(synced))]
pub fn derive_synced(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}
