//! Commands and measurement parameters.
//!
//! Headers are case-insensitive and have short and long forms
//! (`SYST:ERRO?` = `SYSTem:ERRor?`); slmd always sends the short form in
//! upper case, and [`Command::parse_into`] (for the simulator) accepts any
//! prefix of the long form at least as long as the short form.

use crate::ascii::trim;
use crate::{Error, metric};
use core::fmt::Write as _;

/// A parameter of `MEAS:SLM:123?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// `LAS`: A-weighted, slow, live level.
    Las,
    /// `LAF`: A-weighted, fast, live level.
    Laf,
    /// `LAEQ`: A-weighted Leq.
    Laeq,
    /// `LASMAX`: A-weighted, slow, maximum.
    Lasmax,
    /// `LASMIN`: A-weighted, slow, minimum.
    Lasmin,
    /// `LAFMAX`: A-weighted, fast, maximum.
    Lafmax,
    /// `LAFMIN`: A-weighted, fast, minimum.
    Lafmin,
    /// `LCPKMAX`: C-weighted peak, maximum.
    Lcpkmax,
    /// `LCPK`: C-weighted peak, live.
    Lcpk,
    /// `LCEQ`: C-weighted Leq.
    Lceq,
    /// `LCS`: C-weighted, slow, live level.
    Lcs,
    /// `LZEQ`: Z-weighted Leq.
    Lzeq,
    /// `LZPKMAX`: Z-weighted peak, maximum.
    Lzpkmax,
    /// `LAEQt`: A-weighted Leq with the Taktmaximal correction.
    Laeqt,
    /// `L<n>%`: the level exceeded `n` % of the time, `n` in 1..=99 (needs
    /// the Extended Acoustics option).
    Percentile(u8),
}

/// THE mapping: parameter, wire name, record metric. Parameters without a
/// metric are read (e.g. for a configured live parameter) but not mapped;
/// the driver decides what to do with them.
const PARAMS: [(Param, &str, Option<&str>); 14] = [
    (Param::Las, "LAS", Some(metric::LP)),
    (Param::Laf, "LAF", None),
    (Param::Laeq, "LAEQ", Some(metric::LEQ)),
    (Param::Lasmax, "LASMAX", Some(metric::LMAX)),
    (Param::Lasmin, "LASMIN", Some(metric::LMIN)),
    (Param::Lafmax, "LAFMAX", None),
    (Param::Lafmin, "LAFMIN", None),
    (Param::Lcpkmax, "LCPKMAX", Some(metric::LPEAK)),
    (Param::Lcpk, "LCPK", None),
    (Param::Lceq, "LCEQ", None),
    (Param::Lcs, "LCS", None),
    (Param::Lzeq, "LZEQ", None),
    (Param::Lzpkmax, "LZPKMAX", None),
    (Param::Laeqt, "LAEQt", None),
];

/// Percentile wire names `L1%` ..= `L99%`, at index `n - 1`.
static PERCENTILE_WIRE: [&str; 99] = [
    "L1%", "L2%", "L3%", "L4%", "L5%", "L6%", "L7%", "L8%", "L9%", "L10%", "L11%", "L12%", "L13%",
    "L14%", "L15%", "L16%", "L17%", "L18%", "L19%", "L20%", "L21%", "L22%", "L23%", "L24%", "L25%",
    "L26%", "L27%", "L28%", "L29%", "L30%", "L31%", "L32%", "L33%", "L34%", "L35%", "L36%", "L37%",
    "L38%", "L39%", "L40%", "L41%", "L42%", "L43%", "L44%", "L45%", "L46%", "L47%", "L48%", "L49%",
    "L50%", "L51%", "L52%", "L53%", "L54%", "L55%", "L56%", "L57%", "L58%", "L59%", "L60%", "L61%",
    "L62%", "L63%", "L64%", "L65%", "L66%", "L67%", "L68%", "L69%", "L70%", "L71%", "L72%", "L73%",
    "L74%", "L75%", "L76%", "L77%", "L78%", "L79%", "L80%", "L81%", "L82%", "L83%", "L84%", "L85%",
    "L86%", "L87%", "L88%", "L89%", "L90%", "L91%", "L92%", "L93%", "L94%", "L95%", "L96%", "L97%",
    "L98%", "L99%",
];

impl Param {
    /// Every non-percentile parameter, in table order.
    pub fn levels() -> impl Iterator<Item = Param> {
        PARAMS.iter().map(|(param, ..)| *param)
    }

    /// The name on the wire (`LAEQ`, `L90%`); `None` for a percentile
    /// outside 1..=99.
    pub fn wire_name(self) -> Option<&'static str> {
        match self {
            Param::Percentile(n) => PERCENTILE_WIRE.get(usize::from(n).checked_sub(1)?).copied(),
            _ => PARAMS
                .iter()
                .find(|(p, ..)| *p == self)
                .map(|(_, wire, _)| *wire),
        }
    }

    /// The record metric the value goes to (`LAEQ` → `leq`, `L90%` → `l90`);
    /// `None` for parameters the record has no slot for.
    pub fn metric(self) -> Option<&'static str> {
        match self {
            Param::Percentile(n) => metric::percentile(n),
            _ => PARAMS
                .iter()
                .find(|(p, ..)| *p == self)
                .and_then(|(.., m)| *m),
        }
    }

    /// Parses a wire name, case-insensitive (`laeq`, `L90%`).
    pub fn parse(name: &[u8]) -> Option<Param> {
        if let Some((param, ..)) = PARAMS
            .iter()
            .find(|(_, wire, _)| wire.as_bytes().eq_ignore_ascii_case(name))
        {
            return Some(*param);
        }
        PERCENTILE_WIRE
            .iter()
            .position(|wire| wire.as_bytes().eq_ignore_ascii_case(name))
            .and_then(|i| u8::try_from(i).ok()?.checked_add(1))
            .map(Param::Percentile)
    }
}

/// One command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `*IDN?`: identity, answered by [`super::Identity`].
    Idn,
    /// `*RST`: reset (destructive: clears the error queue, stops measuring,
    /// locks keys); wait ~3 s after it.
    Rst,
    /// `INIT START`: start measuring.
    InitStart,
    /// `INIT STOP`: stop measuring.
    InitStop,
    /// `INIT:STATE?`: answered by [`super::InitState`].
    InitState,
    /// `MEAS:INIT`: freeze a snapshot for the following `MEAS:SLM:123?`.
    MeasInit,
    /// `MEAS:SLM:123? <param>…`: read the parameters of the last snapshot.
    MeasSlm(&'a [Param]),
    /// `SYST:ERRO?`: pop the error queue, answered by [`super::parse_error_queue`].
    SystErr,
}

impl<'a> Command<'a> {
    /// Writes the command with its `\n` into `out` (cleared first).
    ///
    /// [`Error::BadParameter`] for a `MeasSlm` with no parameters or with a
    /// percentile outside 1..=99.
    pub fn encode<const N: usize>(&self, out: &mut heapless::String<N>) -> Result<(), Error> {
        out.clear();
        let fixed = match self {
            Command::Idn => "*IDN?\n",
            Command::Rst => "*RST\n",
            Command::InitStart => "INIT START\n",
            Command::InitStop => "INIT STOP\n",
            Command::InitState => "INIT:STATE?\n",
            Command::MeasInit => "MEAS:INIT\n",
            Command::SystErr => "SYST:ERRO?\n",
            Command::MeasSlm(params) => {
                if params.is_empty() {
                    return Err(Error::BadParameter);
                }
                out.push_str("MEAS:SLM:123?")
                    .map_err(|_| Error::BufferFull)?;
                for param in params.iter() {
                    let name = param.wire_name().ok_or(Error::BadParameter)?;
                    write!(out, " {name}").map_err(|_| Error::BufferFull)?;
                }
                return out.push('\n').map_err(|_| Error::BufferFull);
            }
        };
        out.push_str(fixed).map_err(|_| Error::BufferFull)
    }

    /// Parses a command line as the meter would (without the line end), for
    /// the simulator. `MEAS:SLM:123?` parameters (separated by spaces or
    /// commas) land in `params`, which the returned command borrows.
    ///
    /// [`Error::UnknownCommand`] for anything else (also `SYST:MSD`),
    /// [`Error::BadParameter`] for an unknown, missing or surplus parameter
    /// (more than `P`).
    pub fn parse_into<const P: usize>(
        line: &[u8],
        params: &'a mut heapless::Vec<Param, P>,
    ) -> Result<Command<'a>, Error> {
        params.clear();
        let line = trim(line);
        let (header, args) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
            Some(at) => {
                let (h, a) = line.split_at(at);
                (h, trim(a))
            }
            None => (line, &b""[..]),
        };
        let (header, query) = match header.split_last() {
            Some((b'?', rest)) => (rest, true),
            _ => (header, false),
        };
        let mut parts = header.split(|&b| b == b':');
        let first = parts.next().unwrap_or_default();
        let second = parts.next();
        let third = parts.next();
        if parts.next().is_some() {
            return Err(Error::UnknownCommand);
        }
        let no_args = |cmd: Command<'a>| {
            if args.is_empty() {
                Ok(cmd)
            } else {
                Err(Error::BadParameter)
            }
        };
        match (first, second, third, query) {
            (h, None, None, true) if h.eq_ignore_ascii_case(b"*IDN") => no_args(Command::Idn),
            (h, None, None, false) if h.eq_ignore_ascii_case(b"*RST") => no_args(Command::Rst),
            (h, None, None, false) if mnemonic(h, "INITIATE", 4) => {
                if args.eq_ignore_ascii_case(b"START") {
                    Ok(Command::InitStart)
                } else if args.eq_ignore_ascii_case(b"STOP") {
                    Ok(Command::InitStop)
                } else {
                    Err(Error::BadParameter)
                }
            }
            (h, Some(s), None, true) if mnemonic(h, "INITIATE", 4) && mnemonic(s, "STATE", 4) => {
                no_args(Command::InitState)
            }
            (h, Some(s), None, false)
                if mnemonic(h, "MEASURE", 4) && mnemonic(s, "INITIATE", 4) =>
            {
                no_args(Command::MeasInit)
            }
            (h, Some(s), Some(t), true)
                if mnemonic(h, "MEASURE", 4) && s.eq_ignore_ascii_case(b"SLM") && t == b"123" =>
            {
                for name in args
                    .split(|&b| b == b' ' || b == b',' || b == b'\t')
                    .filter(|n| !n.is_empty())
                {
                    let param = Param::parse(name).ok_or(Error::BadParameter)?;
                    params.push(param).map_err(|_| Error::BadParameter)?;
                }
                if params.is_empty() {
                    return Err(Error::BadParameter);
                }
                Ok(Command::MeasSlm(params.as_slice()))
            }
            (h, Some(s), None, true) if mnemonic(h, "SYSTEM", 4) && mnemonic(s, "ERROR", 3) => {
                no_args(Command::SystErr)
            }
            _ => Err(Error::UnknownCommand),
        }
    }
}

/// A header keyword: a case-insensitive prefix of `long` at least `short`
/// bytes long (`SYST`, `SYSTE`, `SYSTEM`).
fn mnemonic(word: &[u8], long: &str, short: usize) -> bool {
    word.len() >= short
        && long
            .as_bytes()
            .get(..word.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(cmd: Command<'_>) -> std::string::String {
        let mut out = heapless::String::<128>::new();
        cmd.encode(&mut out).expect("fits");
        std::string::String::from(out.as_str())
    }

    #[test]
    fn encodes_the_session_commands() {
        assert_eq!(encoded(Command::Idn), "*IDN?\n");
        assert_eq!(encoded(Command::Rst), "*RST\n");
        assert_eq!(encoded(Command::InitStart), "INIT START\n");
        assert_eq!(encoded(Command::InitStop), "INIT STOP\n");
        assert_eq!(encoded(Command::InitState), "INIT:STATE?\n");
        assert_eq!(encoded(Command::MeasInit), "MEAS:INIT\n");
        assert_eq!(encoded(Command::SystErr), "SYST:ERRO?\n");
        assert_eq!(
            encoded(Command::MeasSlm(&[
                Param::Las,
                Param::Laeq,
                Param::Percentile(5),
                Param::Lcpkmax
            ])),
            "MEAS:SLM:123? LAS LAEQ L5% LCPKMAX\n"
        );
    }

    #[test]
    fn refuses_what_cannot_be_sent() {
        let mut out = heapless::String::<128>::new();
        assert_eq!(
            Command::MeasSlm(&[]).encode(&mut out),
            Err(Error::BadParameter)
        );
        assert_eq!(
            Command::MeasSlm(&[Param::Percentile(0)]).encode(&mut out),
            Err(Error::BadParameter)
        );
        let mut small = heapless::String::<8>::new();
        assert_eq!(
            Command::MeasSlm(&[Param::Las]).encode(&mut small),
            Err(Error::BufferFull)
        );
    }

    #[test]
    fn params_map_to_record_metrics() {
        assert_eq!(Param::Las.metric(), Some("lp"));
        assert_eq!(Param::Laeq.metric(), Some("leq"));
        assert_eq!(Param::Lasmax.metric(), Some("lmax"));
        assert_eq!(Param::Lasmin.metric(), Some("lmin"));
        assert_eq!(Param::Lcpkmax.metric(), Some("lpeak"));
        assert_eq!(Param::Percentile(90).metric(), Some("l90"));
        assert_eq!(Param::Lafmax.metric(), None);
        assert_eq!(Param::Percentile(100).metric(), None);
        assert_eq!(Param::Percentile(95).wire_name(), Some("L95%"));
        assert_eq!(Param::Percentile(100).wire_name(), None);
        assert_eq!(Param::parse(b"laeq"), Some(Param::Laeq));
        assert_eq!(Param::parse(b"l10%"), Some(Param::Percentile(10)));
        assert_eq!(Param::parse(b"L0%"), None);
        assert_eq!(Param::parse(b"LAEQt"), Some(Param::Laeqt));
        for p in Param::levels() {
            let wire = p.wire_name().expect("named");
            assert_eq!(Param::parse(wire.as_bytes()), Some(p));
        }
    }

    #[test]
    fn parses_like_the_meter() {
        let mut params = heapless::Vec::<Param, 8>::new();
        for (line, want) in [
            (&b"*idn?"[..], Command::Idn),
            (b"*RST", Command::Rst),
            (b"INIT START", Command::InitStart),
            (b"initiate stop", Command::InitStop),
            (b"INIT:STATE?", Command::InitState),
            (b"INIT:STAT?\r", Command::InitState),
            (b"MEAS:INIT", Command::MeasInit),
            (b"MEASure:INITiate", Command::MeasInit),
            (b"SYST:ERRO?", Command::SystErr),
            (b"SYSTem:ERRor?", Command::SystErr),
        ] {
            assert_eq!(Command::parse_into(line, &mut params), Ok(want));
        }
        assert_eq!(
            Command::parse_into(b"meas:slm:123? las, L90%  laeq", &mut params),
            Ok(Command::MeasSlm(&[
                Param::Las,
                Param::Percentile(90),
                Param::Laeq
            ]))
        );
        for (bad, err) in [
            (&b"SYST:MSDMAC"[..], Error::UnknownCommand),
            (b"SYST:MSD", Error::UnknownCommand),
            (b"", Error::UnknownCommand),
            (b"INIT GO", Error::BadParameter),
            (b"MEAS:SLM:123?", Error::BadParameter),
            (b"MEAS:SLM:123? LXYZ", Error::BadParameter),
            (b"*IDN? now", Error::BadParameter),
            (b"IN:STATE?", Error::UnknownCommand),
        ] {
            assert_eq!(Command::parse_into(bad, &mut params), Err(err));
        }
        let mut two = heapless::Vec::<Param, 2>::new();
        assert_eq!(
            Command::parse_into(b"MEAS:SLM:123? LAS LAF LAEQ", &mut two),
            Err(Error::BadParameter)
        );
    }

    fn any_param() -> impl Strategy<Value = Param> {
        prop_oneof![
            prop::sample::select(Param::levels().collect::<std::vec::Vec<_>>()),
            (1u8..=99).prop_map(Param::Percentile),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut params = heapless::Vec::<Param, 4>::new();
            let _ = Command::parse_into(&bytes, &mut params);
            let _ = Param::parse(&bytes);
        }

        #[test]
        fn encode_parse_round_trips(
            params in prop::collection::vec(any_param(), 1..8),
            pick in 0usize..8,
        ) {
            let cmd = [
                Command::Idn, Command::Rst, Command::InitStart, Command::InitStop,
                Command::InitState, Command::MeasInit, Command::SystErr,
                Command::MeasSlm(&params),
            ][pick];
            let text = encoded(cmd);
            prop_assert!(text.ends_with('\n'));
            let mut back = heapless::Vec::<Param, 8>::new();
            prop_assert_eq!(Command::parse_into(text.as_bytes(), &mut back), Ok(cmd));
        }
    }
}
