//! Admin API wire types (`/_nubo/api/v1/...`), shared by the server and the CLI.

pub mod v1;
