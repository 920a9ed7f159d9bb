//! nubo-runtime
