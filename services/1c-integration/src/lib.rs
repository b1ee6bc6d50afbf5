//! 1C:Enterprise integration: OData v3 client, SOAP client, simulator and service.

pub mod exchange;
pub mod odata;
pub mod service;
pub mod simulator;
pub mod soap;
pub mod xml;
