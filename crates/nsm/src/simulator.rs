//! A simulated NSM with the real one's rules.
//!
//! - 32 PCRs of 48 bytes; extend is `SHA-384(old || data)`.
//! - At boot PCR0/1/2 hold the image measurement, PCR3 the parent's IAM role
//!   and PCR4 its instance id when given (both as AWS computes them: one
//!   extension of a zeroed register with the ARN or id text), then PCRs 0-15
//!   are locked. Locked PCRs refuse extension with `ReadOnlyIndex`.
//! - Debug mode zeroes PCRs 0-8, as a real enclave started with
//!   `--debug-mode` reports.
//! - Attestation requests take `user_data` and `nonce` up to 512 bytes and
//!   `public_key` up to 1024, and the encoded request must fit the driver's
//!   4 KiB buffer; larger input is `InputTooLarge`. A document lists the
//!   locked PCRs, as AWS documents it.
//! - Documents are COSE_Sign1 (ES384), signed by a leaf key made at boot,
//!   with a fresh leaf certificate per document from the development
//!   intermediate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use nekms_attestation::pki::{DocumentFields, DocumentSigner};
use nekms_attestation::{Pcr48, PCR_COUNT};
use time::OffsetDateTime;

use crate::measure::Measurement;
use crate::{
    AttestationRequest, ErrorCode, Nsm, NsmDescription, NsmError, PcrState, MAX_NONCE, MAX_PUBLIC_KEY, MAX_REQUEST, MAX_USER_DATA,
    RANDOM_LEN,
};

/// PCRs locked once the boot measurement is in.
const BOOT_LOCKED: u16 = 16;
/// PCRs a debug-mode enclave reports as zero.
const DEBUG_ZEROED: u8 = 9;

/// How to boot a simulated NSM.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub measurement: Measurement,
    /// Zero PCRs 0-8 like a real debug-mode enclave.
    pub debug_mode: bool,
    /// PCR3: the ARN of the parent instance's IAM role.
    pub parent_role_arn: Option<String>,
    /// PCR4: the parent instance id (`i-...`); also the prefix of the module id.
    pub parent_instance_id: Option<String>,
    /// PCR8: the hash of a signed image's signing certificate.
    pub pcr8: Option<Pcr48>,
}

impl SimConfig {
    pub fn new(measurement: Measurement) -> SimConfig {
        SimConfig { measurement, debug_mode: false, parent_role_arn: None, parent_instance_id: None, pcr8: None }
    }
}

struct Bank {
    pcrs: [Pcr48; PCR_COUNT as usize],
    locked: [bool; PCR_COUNT as usize],
}

/// The simulator. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct SimulatedNsm {
    bank: Mutex<Bank>,
    module_id: String,
    signer: DocumentSigner,
    rng: SystemRandom,
}

impl SimulatedNsm {
    /// Boot: measure, lock PCRs 0-15, make the module id.
    pub fn boot(config: SimConfig, signer: DocumentSigner) -> SimulatedNsm {
        let rng = SystemRandom::new();
        let mut pcrs = [Pcr48::ZERO; PCR_COUNT as usize];
        pcrs[0] = config.measurement.pcr0;
        pcrs[1] = config.measurement.pcr1;
        pcrs[2] = config.measurement.pcr2;
        if let Some(arn) = &config.parent_role_arn {
            pcrs[3] = Pcr48::ZERO.extended(arn.as_bytes());
        }
        if let Some(id) = &config.parent_instance_id {
            pcrs[4] = Pcr48::ZERO.extended(id.as_bytes());
        }
        if let Some(pcr8) = config.pcr8 {
            pcrs[8] = pcr8;
        }
        if config.debug_mode {
            pcrs[..DEBUG_ZEROED as usize].fill(Pcr48::ZERO);
        }
        let mut locked = [false; PCR_COUNT as usize];
        locked[..BOOT_LOCKED as usize].fill(true);
        let mut enclave = [0u8; 8];
        rng.fill(&mut enclave).expect("system RNG");
        let instance = config.parent_instance_id.as_deref().unwrap_or("i-00000000000000000");
        let module_id = format!("{instance}-enc{}", hex::encode(enclave));
        SimulatedNsm { bank: Mutex::new(Bank { pcrs, locked }), module_id, signer, rng }
    }

    pub fn module_id(&self) -> &str {
        &self.module_id
    }

    fn bank(&self) -> std::sync::MutexGuard<'_, Bank> {
        // A panic while holding the lock cannot leave the bank half-written:
        // every mutation is a single assignment.
        self.bank.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn index(i: u16) -> Result<usize, NsmError> {
    if i < PCR_COUNT {
        Ok(i as usize)
    } else {
        Err(ErrorCode::InvalidIndex.into())
    }
}

impl Nsm for SimulatedNsm {
    fn describe_pcr(&self, i: u16) -> Result<PcrState, NsmError> {
        let i = index(i)?;
        let bank = self.bank();
        Ok(PcrState { locked: bank.locked[i], value: bank.pcrs[i] })
    }

    fn extend_pcr(&self, i: u16, data: &[u8]) -> Result<Pcr48, NsmError> {
        // {"ExtendPCR": {"index": i, "data": h'..'}}
        let size = 1 + 10 + 1 + 6 + cbor_head_len(i as usize) + 5 + cbor_head_len(data.len()) + data.len();
        if size > MAX_REQUEST {
            return Err(ErrorCode::InputTooLarge.into());
        }
        let i = index(i)?;
        let mut bank = self.bank();
        if bank.locked[i] {
            return Err(ErrorCode::ReadOnlyIndex.into());
        }
        bank.pcrs[i] = bank.pcrs[i].extended(data);
        Ok(bank.pcrs[i])
    }

    fn lock_pcr(&self, i: u16) -> Result<(), NsmError> {
        let i = index(i)?;
        self.bank().locked[i] = true;
        Ok(())
    }

    fn lock_pcrs(&self, range: u16) -> Result<(), NsmError> {
        if range > PCR_COUNT {
            return Err(ErrorCode::InvalidIndex.into());
        }
        self.bank().locked[..range as usize].fill(true);
        Ok(())
    }

    fn describe(&self) -> Result<NsmDescription, NsmError> {
        let bank = self.bank();
        let locked_pcrs: BTreeSet<u16> = (0..PCR_COUNT).filter(|&i| bank.locked[i as usize]).collect();
        Ok(NsmDescription {
            version: (1, 0, 0),
            module_id: self.module_id.clone(),
            max_pcrs: PCR_COUNT,
            locked_pcrs,
            digest: "SHA384".into(),
        })
    }

    fn attestation(&self, req: AttestationRequest) -> Result<Vec<u8>, NsmError> {
        let len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        if len(&req.user_data) > MAX_USER_DATA || len(&req.nonce) > MAX_NONCE || len(&req.public_key) > MAX_PUBLIC_KEY {
            return Err(ErrorCode::InputTooLarge.into());
        }
        let size = request_size(
            "Attestation",
            &[
                ("user_data", req.user_data.as_ref().map(Vec::len)),
                ("nonce", req.nonce.as_ref().map(Vec::len)),
                ("public_key", req.public_key.as_ref().map(Vec::len)),
            ],
        );
        if size > MAX_REQUEST {
            return Err(ErrorCode::InputTooLarge.into());
        }
        let pcrs: BTreeMap<u8, Pcr48> = {
            let bank = self.bank();
            (0..PCR_COUNT as u8).filter(|&i| bank.locked[i as usize]).map(|i| (i, bank.pcrs[i as usize])).collect()
        };
        let fields = DocumentFields {
            module_id: self.module_id.clone(),
            pcrs,
            public_key: req.public_key,
            user_data: req.user_data,
            nonce: req.nonce,
        };
        self.signer.sign(fields, OffsetDateTime::now_utc()).map_err(|e| NsmError::Signing(e.to_string()))
    }

    fn get_random(&self) -> Result<Vec<u8>, NsmError> {
        let mut out = vec![0u8; RANDOM_LEN];
        self.rng.fill(&mut out).map_err(|_| ErrorCode::InternalError)?;
        Ok(out)
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

/// CBOR length of a head (major type + argument) for `n`.
fn cbor_head_len(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Size of the CBOR request the driver would send, as serde_cbor encodes
/// `Request`: `{"Variant": {"field": value, ...}}` with text keys.
fn request_size(variant: &str, fields: &[(&str, Option<usize>)]) -> usize {
    let mut n = 1 + cbor_head_len(variant.len()) + variant.len() + cbor_head_len(fields.len());
    for (name, len) in fields {
        n += cbor_head_len(name.len()) + name.len();
        n += match len {
            Some(l) => cbor_head_len(*l) + l,
            None => 1, // null
        };
    }
    n
}
