//! Pure data types and parsers: labels, matchers, samples, relabelling and the
//! exposition-format parsers. Nothing here does IO, spawns tasks or names a crate of the
//! outer layers (actix, sled, openraft).

pub mod bounded_decode;
pub mod duration;
pub mod labels;
pub mod matcher;
pub mod relabel;
pub mod sample;
pub mod scrape_slot;
pub mod textparse;

pub use labels::{Label, Labels, LabelsBuilder};
pub use matcher::{MatchOp, Matcher};
pub use sample::{STALE_NAN_BITS, Sample, is_stale_nan, stale_nan};
