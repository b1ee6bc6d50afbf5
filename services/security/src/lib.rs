pub mod audit;
pub mod crypto;
pub mod error;
pub mod store;
