//! Client for 1C:Enterprise's standard OData v3 interface.

pub mod expr;
pub mod metadata;
