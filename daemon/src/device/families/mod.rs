//! The meter families slmd speaks, one folder each: a driver behind the
//! [`Family`] seam, with the family's configuration rules beside it. The
//! codec each driver uses lives in `firmware-bridge/src/<family>/`, and
//! its simulator personality in `hil/src/family/`.

pub mod casella;
pub mod nl43;
pub mod svantek;
pub mod xl2;

use super::driver::Family;

/// Every family, by its `protocol = "…"` name. Adding a family is one
/// line here (plus its folder).
pub static FAMILIES: &[&dyn Family] =
    &[&nl43::Nl43, &xl2::Xl2, &svantek::Svantek, &casella::Casella];
