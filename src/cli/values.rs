//! clap parsers for the library's named enums ([`Choice`]): the names and their help come
//! from the library's one table, so `--help` lists them and the library needs no clap.

use crate::config::Choice;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// A parser accepting exactly the names of `T`'s values.
pub fn choice<T: Choice + Send + Sync + Clone>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        T::ALL
            .iter()
            .map(|(_, name, help)| PossibleValue::new(*name).help(*help)),
    )
    .map(|s| T::from_name(&s).expect("clap accepted a listed name"))
}
