//! The datapath, above the state: [`router`] decides what becomes of each
//! packet, [`reader`] reads the tuns and feeds it,
//! on the threads of [`cores`].

pub mod cores;
pub mod reader;
pub mod router;
