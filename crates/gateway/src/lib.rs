//! nubo-gateway
