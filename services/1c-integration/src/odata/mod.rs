//! Client for 1C:Enterprise's standard OData v3 interface.

pub mod client;
pub mod error;
pub mod expr;
pub mod metadata;

pub use client::{BalanceArgs, ClientConfig, Key, OneC, Page, Pager, Query, Secret};
pub use error::ODataError;
pub use expr::{CmpOp, Filter, Literal};
pub use metadata::{Metadata, SetKind};
