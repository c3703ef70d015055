//! Client commands, one module each.

pub mod run;
