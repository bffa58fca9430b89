//! Command-line front ends (argument structs and their `run` functions).

pub mod data;
