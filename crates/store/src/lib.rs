//! nubo-store
