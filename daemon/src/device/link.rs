//! Opening the byte link to a meter: TCP with keepalive, or a serial port
//! opened exclusively.
//!
//! A link is just an async byte stream; everything protocol-specific lives in
//! the driver above it.

use crate::config::{DeviceConfig, LinkConfig, Parity, SerialFraming};
use std::io;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Any byte stream to a meter.
pub trait ByteLink: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteLink for T {}

/// An open link.
pub type Link = Pin<Box<dyn ByteLink>>;

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// TCP connect failed (refused, unreachable, name not resolved...).
    #[error("connect to {address}: {source}")]
    Connect {
        /// The configured address.
        address: String,
        /// The OS error.
        source: io::Error,
    },
    /// TCP connect did not complete in time.
    #[error("connect to {address}: timed out after {timeout:?}")]
    ConnectTimeout {
        /// The configured address.
        address: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The serial port could not be opened (missing, busy, permissions).
    #[error("open {path}: {source}")]
    Serial {
        /// The configured path.
        path: String,
        /// What the serial layer said.
        source: tokio_serial::Error,
    },
}

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the link described by `device`.
pub async fn open(device: &DeviceConfig) -> Result<Link, OpenError> {
    match &device.link {
        LinkConfig::Tcp { address } => open_tcp(address).await.map(|s| Box::pin(s) as Link),
        LinkConfig::Serial { path, framing } => {
            open_serial(&path.to_string_lossy(), *framing).map(|s| Box::pin(s) as Link)
        }
    }
}

/// Connects with TCP keepalive: the meter's control port allows one client
/// and frees the slot slowly, so one long-lived connection must notice a dead
/// peer by itself rather than by reconnecting.
async fn open_tcp(address: &str) -> Result<TcpStream, OpenError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| OpenError::ConnectTimeout {
            address: address.to_owned(),
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|source| OpenError::Connect {
            address: address.to_owned(),
            source,
        })?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let sock = socket2::SockRef::from(&stream);
    // Both are best effort: a link without them still works.
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Opens a serial port with the meter's framing and no flow control,
/// exclusively (TIOCEXCL), so no second process can read the meter's
/// answers.
fn open_serial(
    path: &str,
    framing: SerialFraming,
) -> Result<tokio_serial::SerialStream, OpenError> {
    use tokio_serial::{DataBits, FlowControl, SerialPortBuilderExt, StopBits};
    let serial_error = |source| OpenError::Serial {
        path: path.to_owned(),
        source,
    };
    let data_bits = match framing.data_bits {
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let stop_bits = match framing.stop_bits {
        2 => StopBits::Two,
        _ => StopBits::One,
    };
    let parity = match framing.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let mut port = tokio_serial::new(path, framing.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(FlowControl::None)
        .open_native_async()
        .map_err(serial_error)?;
    port.set_exclusive(true).map_err(serial_error)?;
    Ok(port)
}
