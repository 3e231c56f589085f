//! The datapath, above the state: [`router`] decides what becomes of each
//! packet, [`reader`] reads the tuns and feeds it.

pub mod reader;
pub mod router;
