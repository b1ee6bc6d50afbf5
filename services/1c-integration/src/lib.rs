//! 1C:Enterprise integration: OData v3 client, SOAP client, simulator and service.

pub mod odata;
pub mod simulator;
pub mod soap;
