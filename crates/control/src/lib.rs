//! nubo-control
