//! The Postgres v3 wire protocol as pgsplit needs it: framing over raw `Bytes`, typed views of the few
//! messages routing inspects, and builders for the messages pgsplit sends itself.

pub mod frame;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use frame::{read_frame, Frame, FrameError};
