//! The Postgres v3 wire protocol as pgsplit needs it: framing over raw `Bytes`, message tags per direction
//! (`frontend`: what clients send, `backend`: what servers send), the typed view a client message is decoded into
//! once, and builders for the messages pgsplit sends itself.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use frame::{read_frame, Frame, FrameError};
