//! vassal-router library; see issue 3.
