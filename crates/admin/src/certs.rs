//! The boundary checks of a certificate upload that need the clock (expiry), beside the pure
//! ones the model runs again in `apply`.

use gateway_model::{Cert, Invalid, check_cert_time, validate_cert};
use std::time::{SystemTime, UNIX_EPOCH};

/// Checks a certificate for upload: name, PEM, key match (as `apply` will), and that it is
/// valid now. Returns the certificate as it will be stored, without its key (for the reply).
pub fn checked_cert(cert: &Cert) -> Result<Cert, Invalid> {
    let info = validate_cert(cert)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    check_cert_time(&info, now)?;
    let mut shown = cert.redacted();
    shown.names = info.names;
    shown.not_before = info.not_before;
    shown.not_after = info.not_after;
    Ok(shown)
}
