//! vassal-launch library; see issue 4.
