//! Canonical metric names: the keys of a record's `metrics` object (SPEC §3).
//!
//! Every codec maps its own wire names (`LAEQ`, `R`, `<LAeq>`, …) to these
//! constants, so a daemon driver never spells a metric name itself and two
//! families can never disagree on one.

/// Lp: the instantaneous (time-weighted) sound pressure level.
pub const LP: &str = "lp";
/// Leq: the equivalent continuous level over the measurement.
pub const LEQ: &str = "leq";
/// LE: the sound exposure level (SEL).
pub const LE: &str = "le";
/// Lmax: the highest time-weighted level.
pub const LMAX: &str = "lmax";
/// Lmin: the lowest time-weighted level.
pub const LMIN: &str = "lmin";
/// Lpeak: the highest peak level.
pub const LPEAK: &str = "lpeak";

/// `l1` ..= `l99`, at index `n - 1`.
static PERCENTILES: [&str; 99] = [
    "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11", "l12", "l13", "l14", "l15",
    "l16", "l17", "l18", "l19", "l20", "l21", "l22", "l23", "l24", "l25", "l26", "l27", "l28",
    "l29", "l30", "l31", "l32", "l33", "l34", "l35", "l36", "l37", "l38", "l39", "l40", "l41",
    "l42", "l43", "l44", "l45", "l46", "l47", "l48", "l49", "l50", "l51", "l52", "l53", "l54",
    "l55", "l56", "l57", "l58", "l59", "l60", "l61", "l62", "l63", "l64", "l65", "l66", "l67",
    "l68", "l69", "l70", "l71", "l72", "l73", "l74", "l75", "l76", "l77", "l78", "l79", "l80",
    "l81", "l82", "l83", "l84", "l85", "l86", "l87", "l88", "l89", "l90", "l91", "l92", "l93",
    "l94", "l95", "l96", "l97", "l98", "l99",
];

/// The name of the level exceeded `n` % of the time: `l5` for 5, `l90` for
/// 90; `None` outside 1..=99.
pub fn percentile(n: u8) -> Option<&'static str> {
    PERCENTILES.get(usize::from(n).checked_sub(1)?).copied()
}

/// The percentile number of a name made by [`percentile`] (`l90` → 90).
pub fn percentile_number(name: &str) -> Option<u8> {
    let n = PERCENTILES.iter().position(|p| *p == name)?;
    u8::try_from(n).ok()?.checked_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_names() {
        assert_eq!(percentile(0), None);
        assert_eq!(percentile(1), Some("l1"));
        assert_eq!(percentile(90), Some("l90"));
        assert_eq!(percentile(99), Some("l99"));
        assert_eq!(percentile(100), None);
        for n in 1..=99u8 {
            let name = percentile(n).expect("in range");
            assert_eq!(name, std::format!("l{n}"));
            assert_eq!(percentile_number(name), Some(n));
        }
        assert_eq!(percentile_number("leq"), None);
    }
}
