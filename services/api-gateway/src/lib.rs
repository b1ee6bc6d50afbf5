pub mod breaker;
pub mod ratelimit;
pub mod routes;
