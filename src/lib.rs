pub mod cli;
pub mod data;
