//! The real `/dev/nsm`, through the `aws-nitro-enclaves-nsm-api` driver.

use std::collections::BTreeSet;

use aws_nitro_enclaves_nsm_api::api::{Digest, ErrorCode as ApiCode, Request, Response};
use aws_nitro_enclaves_nsm_api::driver;
use nekms_attestation::Pcr48;
use serde_bytes::ByteBuf;

use crate::{AttestationRequest, ErrorCode, Nsm, NsmDescription, NsmError, PcrState};

/// An open `/dev/nsm`. Closed on drop.
#[derive(Debug)]
pub struct DeviceNsm {
    fd: i32,
}

impl DeviceNsm {
    /// Open `/dev/nsm`. Fails outside a Nitro Enclave.
    pub fn open() -> Result<DeviceNsm, NsmError> {
        if !std::path::Path::new("/dev/nsm").exists() {
            return Err(NsmError::Unavailable("no such device (not inside a Nitro Enclave?)".into()));
        }
        let fd = driver::nsm_init();
        if fd < 0 {
            return Err(NsmError::Unavailable(std::io::Error::last_os_error().to_string()));
        }
        Ok(DeviceNsm { fd })
    }

    fn call(&self, request: Request) -> Response {
        driver::nsm_process_request(self.fd, request)
    }
}

impl Drop for DeviceNsm {
    fn drop(&mut self) {
        driver::nsm_exit(self.fd);
    }
}

impl From<ApiCode> for ErrorCode {
    fn from(c: ApiCode) -> ErrorCode {
        match c {
            ApiCode::InvalidArgument => ErrorCode::InvalidArgument,
            ApiCode::InvalidIndex => ErrorCode::InvalidIndex,
            ApiCode::InvalidResponse => ErrorCode::InvalidResponse,
            ApiCode::ReadOnlyIndex => ErrorCode::ReadOnlyIndex,
            ApiCode::InvalidOperation => ErrorCode::InvalidOperation,
            ApiCode::BufferTooSmall => ErrorCode::BufferTooSmall,
            ApiCode::InputTooLarge => ErrorCode::InputTooLarge,
            // `Success` inside an error response is itself a protocol fault.
            ApiCode::Success | ApiCode::InternalError => ErrorCode::InternalError,
        }
    }
}

fn unexpected(request: &'static str, r: Response) -> NsmError {
    match r {
        Response::Error(code) => NsmError::Code(code.into()),
        _ => NsmError::UnexpectedResponse { request },
    }
}

fn pcr(data: &[u8]) -> Result<Pcr48, NsmError> {
    Pcr48::from_slice(data).ok_or(NsmError::UnexpectedResponse { request: "PCR (not 48 bytes)" })
}

pub(crate) fn describe_pcr_response(r: Response) -> Result<PcrState, NsmError> {
    match r {
        Response::DescribePCR { lock, data } => Ok(PcrState { locked: lock, value: pcr(&data)? }),
        r => Err(unexpected("DescribePCR", r)),
    }
}

pub(crate) fn extend_pcr_response(r: Response) -> Result<Pcr48, NsmError> {
    match r {
        Response::ExtendPCR { data } => pcr(&data),
        r => Err(unexpected("ExtendPCR", r)),
    }
}

pub(crate) fn describe_response(r: Response) -> Result<NsmDescription, NsmError> {
    match r {
        Response::DescribeNSM { version_major, version_minor, version_patch, module_id, max_pcrs, locked_pcrs, digest } => {
            Ok(NsmDescription {
                version: (version_major, version_minor, version_patch),
                module_id,
                max_pcrs,
                locked_pcrs: locked_pcrs.into_iter().collect::<BTreeSet<u16>>(),
                digest: match digest {
                    Digest::SHA256 => "SHA256",
                    Digest::SHA384 => "SHA384",
                    Digest::SHA512 => "SHA512",
                }
                .into(),
            })
        }
        r => Err(unexpected("DescribeNSM", r)),
    }
}

impl Nsm for DeviceNsm {
    fn describe_pcr(&self, index: u16) -> Result<PcrState, NsmError> {
        describe_pcr_response(self.call(Request::DescribePCR { index }))
    }

    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Pcr48, NsmError> {
        extend_pcr_response(self.call(Request::ExtendPCR { index, data: data.to_vec() }))
    }

    fn lock_pcr(&self, index: u16) -> Result<(), NsmError> {
        match self.call(Request::LockPCR { index }) {
            Response::LockPCR => Ok(()),
            r => Err(unexpected("LockPCR", r)),
        }
    }

    fn lock_pcrs(&self, range: u16) -> Result<(), NsmError> {
        match self.call(Request::LockPCRs { range }) {
            Response::LockPCRs => Ok(()),
            r => Err(unexpected("LockPCRs", r)),
        }
    }

    fn describe(&self) -> Result<NsmDescription, NsmError> {
        describe_response(self.call(Request::DescribeNSM))
    }

    fn attestation(&self, req: AttestationRequest) -> Result<Vec<u8>, NsmError> {
        let request = Request::Attestation {
            user_data: req.user_data.map(ByteBuf::from),
            nonce: req.nonce.map(ByteBuf::from),
            public_key: req.public_key.map(ByteBuf::from),
        };
        match self.call(request) {
            Response::Attestation { document } => Ok(document),
            r => Err(unexpected("Attestation", r)),
        }
    }

    fn get_random(&self) -> Result<Vec<u8>, NsmError> {
        match self.call(Request::GetRandom) {
            Response::GetRandom { random } if !random.is_empty() => Ok(random),
            r => Err(unexpected("GetRandom", r)),
        }
    }

    fn is_simulated(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_outside_an_enclave_says_why() {
        if std::path::Path::new("/dev/nsm").exists() {
            return; // inside a real enclave: nothing to show here
        }
        let err = DeviceNsm::open().unwrap_err();
        assert!(err.to_string().contains("/dev/nsm"), "{err}");
    }

    #[test]
    fn device_error_codes_map_one_to_one() {
        assert_eq!(ErrorCode::from(ApiCode::ReadOnlyIndex), ErrorCode::ReadOnlyIndex);
        assert_eq!(ErrorCode::from(ApiCode::InputTooLarge), ErrorCode::InputTooLarge);
        assert_eq!(ErrorCode::from(ApiCode::InvalidIndex), ErrorCode::InvalidIndex);
        assert_eq!(ErrorCode::from(ApiCode::Success), ErrorCode::InternalError);
    }

    #[test]
    fn responses_are_decoded_and_mismatches_refused() {
        let ok = describe_pcr_response(Response::DescribePCR { lock: true, data: vec![7; 48] }).unwrap();
        assert!(ok.locked);
        assert_eq!(ok.value, Pcr48([7; 48]));
        assert!(matches!(
            describe_pcr_response(Response::DescribePCR { lock: false, data: vec![0; 32] }),
            Err(NsmError::UnexpectedResponse { .. })
        ));
        assert!(matches!(extend_pcr_response(Response::Error(ApiCode::ReadOnlyIndex)), Err(NsmError::Code(ErrorCode::ReadOnlyIndex))));
        assert!(matches!(extend_pcr_response(Response::LockPCRs), Err(NsmError::UnexpectedResponse { request: "ExtendPCR" })));
        let d = describe_response(Response::DescribeNSM {
            version_major: 1,
            version_minor: 0,
            version_patch: 0,
            module_id: "i-1-enc2".into(),
            max_pcrs: 32,
            locked_pcrs: (0..16).collect(),
            digest: Digest::SHA384,
        })
        .unwrap();
        assert_eq!(d.locked_pcrs.len(), 16);
        assert_eq!(d.digest, "SHA384");
    }
}
