//! SMART Backend Services: keys (PEM, JWK/JWKS), client assertion, token cache, discovery.
//!
//! A backend client proves who it is with a short-lived JWT (the client assertion) signed by its
//! private key, and trades it at the token endpoint for a bearer token
//! ([SMART App Launch: Backend Services](https://hl7.org/fhir/smart-app-launch/backend-services.html)).
//! [`SmartAuth`] does the whole exchange and keeps the token fresh for every request sharing it.

mod auth;
mod key;

pub(crate) use auth::join;
pub use auth::{AccessToken, SmartAuth, SmartConfig};
pub use key::SigningKey;
