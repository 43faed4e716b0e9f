//! The blocking client side of the control socket: plain std I/O, so the CLI needs no
//! async runtime for `status`, `stop` and `ctl`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{ControlError, Request, Response};
use crate::paths::Paths;

/// Sends one request to the daemon on `port` (its socket in `paths`) and returns its result.
pub fn request(
    paths: &Paths,
    port: u16,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    request_at(&paths.control_socket(port), request, timeout)
}

/// Sends one request over the socket at `path`.
pub fn request_at(path: &Path, request: &Request, timeout: Duration) -> Result<serde_json::Value, ControlError> {
    let mut stream =
        UnixStream::connect(path).map_err(|cause| ControlError::Connect { path: path.to_owned(), cause })?;
    stream.set_read_timeout(Some(timeout)).map_err(ControlError::Io)?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).map_err(ControlError::Io)?;
    let mut line = serde_json::to_vec(request).map_err(ControlError::BadAnswer)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(ControlError::Io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(|cause| ControlError::NoAnswer {
        path: path.to_owned(),
        timeout,
        cause,
    })?;
    if answer.is_empty() {
        return Err(ControlError::Closed);
    }
    let response: Response = serde_json::from_str(&answer).map_err(ControlError::BadAnswer)?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, Some(error)) => Err(ControlError::Refused(error)),
        _ => Err(ControlError::Refused("empty answer on the control socket".into())),
    }
}
