//! Reading the tensors of a `torch.save` file without running any pickle code.
//!
//! A `.pt` file of torch ≥ 1.6 is a zip archive (`torch/serialization.py`, `_save`):
//! `<prefix>/data.pkl` is a pickle of the saved object, whose tensors point with a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)` at the raw
//! little-endian bytes in `<prefix>/data/<key>`, and each tensor is rebuilt by calling
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`.
//!
//! Unpickling normally means calling whatever global the stream names (`os.system` as
//! readily as a tensor constructor). This reader is a pickle machine that knows only the
//! opcodes and globals of that reconstruction ([`ALLOWED_GLOBALS`], the storage classes,
//! `collections.OrderedDict`) and computes them itself; any other opcode or global is
//! refused by name, before anything else is read. Nothing the file says is ever called.
//!
//! The zip reader is as narrow: torch writes every record stored, uncompressed
//! (`caffe2/serialize/inline_container.cc` writes with compression level 0), so compressed
//! records, ZIP64 archives and the legacy pre-1.6 format are refused rather than handled.

use std::collections::BTreeMap;

/// The callables a tensor's reconstruction uses, as `module.name`.
const ALLOWED_GLOBALS: &[&str] =
    &["collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"];

/// torch's legacy storage classes (`torch.FloatStorage`, ...) that name a storage's dtype in
/// the persistent id, with the safetensors dtype and bytes per element.
const STORAGES: &[(&str, &str, usize)] = &[
    ("FloatStorage", "F32", 4),
    ("HalfStorage", "F16", 2),
    ("BFloat16Storage", "BF16", 2),
    ("DoubleStorage", "F64", 8),
    ("LongStorage", "I64", 8),
    ("IntStorage", "I32", 4),
    ("ShortStorage", "I16", 2),
    ("CharStorage", "I8", 1),
    ("ByteStorage", "U8", 1),
    ("BoolStorage", "BOOL", 1),
];

/// One tensor, contiguous in row-major order, as safetensors stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// safetensors dtype name (`F32`, `F16`, ...).
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

/// Why a file is not read. The message names the opcode, global or record at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PickleError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(msg.into()))
}

/// The tensors of the `torch.save` file `bytes` (a dict of name → tensor, such as a
/// module's `state_dict()`), by name.
pub fn read_state_dict(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, PickleError> {
    let zip = Zip::open(bytes)?;
    let pkl_name = zip
        .names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| PickleError("it has no <name>/data.pkl record".into()))?
        .to_owned();
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    if let Some(order) = zip.get(&format!("{prefix}byteorder"))? {
        if order != b"little" {
            return err(format!(
                "its tensors are stored {} endian; only little endian is read",
                String::from_utf8_lossy(order)
            ));
        }
    }
    let root = Machine::default().run(zip.get(&pkl_name)?.unwrap_or_default())?;
    let Value::Dict(items) = root else {
        return err(format!("it holds {}, not a dict of tensors", root.kind()));
    };
    let mut out = BTreeMap::new();
    for (k, v) in items {
        let Value::Str(name) = k else { return err(format!("a key is {}, not a tensor name", k.kind())) };
        let Value::Tensor(t) = v else { return err(format!("{name:?} is {}, not a tensor", v.kind())) };
        let storage = zip
            .get(&format!("{prefix}data/{}", t.key))?
            .ok_or_else(|| PickleError(format!("tensor {name:?} points at a missing storage record {:?}", t.key)))?;
        out.insert(name.clone(), t.materialize(&name, storage)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The zip archive (APPNOTE.TXT 4.3: end of central directory, central directory headers,
// local file headers).

struct Zip<'a> {
    bytes: &'a [u8],
    /// name → (offset of the local header, size).
    entries: Vec<(String, usize, usize)>,
}

fn le16(b: &[u8], at: usize) -> Result<usize, PickleError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
        .ok_or_else(|| PickleError("the zip archive is truncated".into()))
}

fn le32(b: &[u8], at: usize) -> Result<usize, PickleError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or_else(|| PickleError("the zip archive is truncated".into()))
}

impl<'a> Zip<'a> {
    fn open(bytes: &'a [u8]) -> Result<Self, PickleError> {
        if bytes.first() == Some(&0x80) {
            return err("it is in torch's legacy (pre-1.6) format; re-save it with a current torch.save");
        }
        if !bytes.starts_with(b"PK\x03\x04") {
            return err("it is not a torch.save zip archive");
        }
        // The end-of-central-directory record: 22 bytes plus a comment of up to 65535.
        let low = bytes.len().saturating_sub(22 + 65535);
        let eocd = (low..bytes.len().saturating_sub(21))
            .rev()
            .find(|&i| bytes[i..i + 4] == *b"PK\x05\x06")
            .ok_or_else(|| PickleError("the zip archive has no central directory".into()))?;
        let count = le16(bytes, eocd + 10)?;
        let mut at = le32(bytes, eocd + 16)?;
        if count == 0xFFFF || at == 0xFFFF_FFFF {
            return err("it is a ZIP64 archive, which is not read");
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            if bytes.get(at..at + 4) != Some(b"PK\x01\x02") {
                return err("the zip central directory is corrupt");
            }
            let method = le16(bytes, at + 10)?;
            let (packed, size) = (le32(bytes, at + 20)?, le32(bytes, at + 24)?);
            let (name_len, extra_len, comment_len) =
                (le16(bytes, at + 28)?, le16(bytes, at + 30)?, le16(bytes, at + 32)?);
            let local = le32(bytes, at + 42)?;
            let name = bytes
                .get(at + 46..at + 46 + name_len)
                .ok_or_else(|| PickleError("the zip archive is truncated".into()))?;
            let name = String::from_utf8_lossy(name).into_owned();
            if method != 0 || packed != size {
                return err(format!(
                    "zip record {name:?} is compressed (method {method}); torch stores records uncompressed"
                ));
            }
            if size == 0xFFFF_FFFF || local == 0xFFFF_FFFF {
                return err("it is a ZIP64 archive, which is not read");
            }
            entries.push((name, local, size));
            at += 46 + name_len + extra_len + comment_len;
        }
        Ok(Zip { bytes, entries })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _, _)| n.as_str())
    }

    /// The bytes of record `name`, if the archive has it.
    fn get(&self, name: &str) -> Result<Option<&'a [u8]>, PickleError> {
        let Some(&(_, local, size)) = self.entries.iter().find(|(n, _, _)| n == name) else { return Ok(None) };
        if self.bytes.get(local..local + 4) != Some(b"PK\x03\x04") {
            return err(format!("zip record {name:?} has no local header"));
        }
        let start = local + 30 + le16(self.bytes, local + 26)? + le16(self.bytes, local + 28)?;
        self.bytes
            .get(start..start + size)
            .map(Some)
            .ok_or_else(|| PickleError(format!("zip record {name:?} is truncated")))
    }
}

// ---------------------------------------------------------------------------------------
// The pickle machine (opcodes as in CPython's Lib/pickletools.py).

/// A tensor as `_rebuild_tensor_v2` describes it, before its storage is read.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    key: String,
    dtype: &'static str,
    elem: usize,
    numel: usize,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    /// The tensor's elements copied out of `storage` in row-major order (a saved tensor may
    /// be a strided view of a larger storage).
    fn materialize(&self, name: &str, storage: &[u8]) -> Result<Tensor, PickleError> {
        if storage.len() < self.numel * self.elem {
            return err(format!(
                "tensor {name:?}: its storage has {} bytes, the file says {} elements",
                storage.len(),
                self.numel
            ));
        }
        let count: usize = self.shape.iter().product();
        let mut data = Vec::with_capacity(count * self.elem);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..count {
            let at = self.offset + index.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
            if at >= self.numel {
                return err(format!("tensor {name:?} reaches past the end of its storage"));
            }
            data.extend_from_slice(&storage[at * self.elem..(at + 1) * self.elem]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(Tensor { dtype: self.dtype, shape: self.shape.clone(), data })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage { dtype: &'static str, elem: usize },
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage { key: String, dtype: &'static str, elem: usize, numel: usize },
    Tensor(TensorRef),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Storage { .. } => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn usize(&self, what: &str) -> Result<usize, PickleError> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            v => err(format!("{what} is {}, not a size", v.kind())),
        }
    }

    fn sizes(&self, what: &str) -> Result<Vec<usize>, PickleError> {
        match self {
            Value::Tuple(items) => items.iter().map(|v| v.usize(what)).collect(),
            v => err(format!("{what} is {}, not a tuple of sizes", v.kind())),
        }
    }
}

/// The global `module.name` if reconstruction uses it; anything else is refused by name.
fn global(module: &str, name: &str) -> Result<Global, PickleError> {
    let full = format!("{module}.{name}");
    if module == "torch" {
        if let Some(&(_, dtype, elem)) = STORAGES.iter().find(|(n, _, _)| *n == name) {
            return Ok(Global::Storage { dtype, elem });
        }
    }
    Ok(match ALLOWED_GLOBALS.iter().position(|g| *g == full) {
        Some(0) => Global::OrderedDict,
        Some(1) => Global::RebuildTensor,
        Some(2) => Global::RebuildParameter,
        _ => return err(format!("its pickle names the global {full}, which is not part of torch tensor reconstruction; refused without running it")),
    })
}

/// Bounds on what a file may make us build: the memo and the stack of a state dict are
/// small, and these keep a hostile file from making them large.
const MAX_ITEMS: usize = 1 << 20;

#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: BTreeMap<usize, Value>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let s = self
            .bytes
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| PickleError("its pickle ends early".into()))?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<usize, PickleError> {
        Ok(self.take(1)?[0] as usize)
    }
    fn u32(&mut self) -> Result<usize, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.at.min(self.bytes.len())..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| PickleError("its pickle ends early".into()))?;
        self.at += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn text(&mut self, n: usize) -> Result<String, PickleError> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| PickleError("its pickle has a string that is not UTF-8".into()))
    }
}

impl Machine {
    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| PickleError("its pickle pops an empty stack".into()))
    }

    /// The values pushed since the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| PickleError("its pickle has no MARK where one is needed".into()))?;
        if mark > self.stack.len() {
            return err("its pickle's MARK is past the stack");
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        self.stack.last_mut().ok_or_else(|| PickleError("its pickle uses an empty stack".into()))
    }

    fn memoize(&mut self, key: usize) -> Result<(), PickleError> {
        if self.memo.len() >= MAX_ITEMS {
            return err("its pickle's memo is too large");
        }
        let v = self.stack.last().cloned().ok_or_else(|| PickleError("its pickle memoizes an empty stack".into()))?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_ITEMS {
            return err("its pickle's stack is too deep");
        }
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return err("its pickle sets a dict item without a value");
        }
        let Value::Dict(d) = self.top()? else { return err("its pickle sets items on something that is not a dict") };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match d.iter_mut().find(|(old, _)| *old == k) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    /// A REDUCE: `callable(*args)`, computed here for the allowed reconstruction globals.
    fn call(callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args) = args else { return err("its pickle calls with arguments that are not a tuple") };
        let Value::Global(g) = callable else {
            return err(format!("its pickle calls {}, which is not a reconstruction function", callable.kind()));
        };
        match g {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::OrderedDict => err("its pickle builds an OrderedDict from arguments; only empty ones are read"),
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            Global::RebuildTensor if (6..=7).contains(&args.len()) => {
                let Value::Storage { key, dtype, elem, numel } = &args[0] else {
                    return err(format!("a tensor is rebuilt from {}, not a storage", args[0].kind()));
                };
                let (shape, stride) = (args[2].sizes("a tensor's size")?, args[3].sizes("a tensor's stride")?);
                if shape.len() != stride.len() {
                    return err("a tensor's size and stride differ in length");
                }
                Ok(Value::Tensor(TensorRef {
                    key: key.clone(),
                    dtype,
                    elem: *elem,
                    numel: *numel,
                    offset: args[1].usize("a tensor's storage offset")?,
                    shape,
                    stride,
                }))
            }
            // (data, requires_grad, backward_hooks[, state])
            Global::RebuildParameter if (3..=4).contains(&args.len()) => match &args[0] {
                Value::Tensor(_) => Ok(args[0].clone()),
                v => err(format!("a parameter is rebuilt from {}, not a tensor", v.kind())),
            },
            Global::Storage { .. } => err("its pickle calls a storage class, which reconstruction never does"),
            _ => err("its pickle calls a reconstruction function with unexpected arguments"),
        }
    }

    /// A BINPERSID: torch's storage reference `('storage', storage_type, key, location, numel)`.
    fn persistent(pid: Value) -> Result<Value, PickleError> {
        match pid {
            Value::Tuple(t) if t.len() == 5 && t[0] == Value::Str("storage".into()) => {
                let Value::Global(Global::Storage { dtype, elem }) = t[1] else {
                    return err(format!("a storage reference names {}, not a storage type", t[1].kind()));
                };
                let Value::Str(key) = &t[2] else { return err("a storage reference's key is not a string") };
                Ok(Value::Storage { key: key.clone(), dtype, elem, numel: t[4].usize("a storage's element count")? })
            }
            v => err(format!("its pickle has a persistent id that is {}, not a torch storage reference", v.kind())),
        }
    }

    /// Runs the pickle to its STOP and returns what it built.
    fn run(mut self, bytes: &[u8]) -> Result<Value, PickleError> {
        let mut r = Reader { bytes, at: 0 };
        loop {
            let op = r.take(1)?[0];
            match op {
                0x80 => {
                    let proto = r.u8()?;
                    if proto > 5 {
                        return err(format!("its pickle has protocol {proto}; 5 is the newest"));
                    }
                }
                0x95 => {
                    r.take(8)?; // FRAME: a length hint.
                }
                b'c' => {
                    let (module, name) = (r.line()?, r.line()?);
                    self.push(Value::Global(global(&module, &name)?))?;
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return err("its pickle's STACK_GLOBAL names are not strings");
                    };
                    self.push(Value::Global(global(&module, &name)?))?;
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b'(' => {
                    if self.marks.len() >= MAX_ITEMS {
                        return err("its pickle nests too deep");
                    }
                    self.marks.push(self.stack.len());
                }
                b'q' => {
                    let k = r.u8()?;
                    self.memoize(k)?;
                }
                b'r' => {
                    let k = r.u32()?;
                    self.memoize(k)?;
                }
                0x94 => {
                    let k = self.memo.len();
                    self.memoize(k)?;
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { r.u8()? } else { r.u32()? };
                    let v = self.memo.get(&k).cloned().ok_or_else(|| PickleError(format!("its pickle reads memo {k}, never written")))?;
                    self.push(v)?;
                }
                b'X' => {
                    let n = r.u32()?;
                    let s = r.text(n)?;
                    self.push(Value::Str(s))?;
                }
                0x8c => {
                    let n = r.u8()?;
                    let s = r.text(n)?;
                    self.push(Value::Str(s))?;
                }
                0x8d => {
                    let b = r.take(8)?;
                    let n = u64::from_le_bytes(b.try_into().unwrap());
                    let s = r.text(usize::try_from(n).unwrap_or(usize::MAX))?;
                    self.push(Value::Str(s))?;
                }
                b'J' => {
                    let b = r.take(4)?;
                    self.push(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64))?;
                }
                b'K' => {
                    let v = r.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let b = r.take(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?;
                }
                0x8a => {
                    let n = r.u8()?;
                    let b = r.take(n)?;
                    if n > 8 {
                        return err("its pickle has an integer wider than 64 bits");
                    }
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement of n bytes
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = r.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return err("its pickle builds a tuple from an empty stack");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items))?;
                }
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'N' => self.push(Value::None)?,
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(Self::call(callable, args)?)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Self::persistent(pid)?)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                    let Value::List(l) = self.top()? else { return err("its pickle appends to something that is not a list") };
                    l.extend(items);
                }
                b'b' => {
                    // BUILD on a state dict sets its `_metadata` attribute (module versions),
                    // which holds no tensors and is dropped.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return err("its pickle sets the state of something other than a dict");
                    }
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                other => {
                    return err(format!(
                        "its pickle uses opcode {:?} (0x{other:02x}), which torch tensor reconstruction does not; refused without running it",
                        other as char
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored zip of `records`, as torch writes one (no compression; CRCs are not read).
    fn zip(records: &[(&str, &[u8])]) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data) in records {
            let local = out.len() as u32;
            out.extend_from_slice(b"PK\x03\x04");
            out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            central.extend_from_slice(b"PK\x01\x02");
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 12]);
            central.extend_from_slice(&local.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let at = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(records.len() as u16).to_le_bytes());
        out.extend_from_slice(&(records.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// `torch.save({'w': torch.arange(6.).reshape(2, 3).t()}, f)`'s pickle, protocol 2 (a
    /// transposed view: stride (1, 3)), written out opcode by opcode.
    fn transposed_pickle() -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02".to_vec();
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04");
        p.extend_from_slice(b"ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08Q");
        p.extend_from_slice(b"K\x00K\x03K\x02\x86K\x01K\x03\x86\x89ccollections\nOrderedDict\n)Rtq\tRq\ns");
        p.extend_from_slice(b"}X\t\x00\x00\x00_metadata}sb.");
        p
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|f| f.to_le_bytes()).collect()
    }

    #[test]
    fn reads_a_strided_tensor_in_row_major_order() {
        let storage = floats(&[0., 1., 2., 3., 4., 5.]);
        let file = zip(&[
            ("archive/data.pkl", &transposed_pickle()),
            ("archive/byteorder", b"little"),
            ("archive/data/0", &storage),
        ]);
        let got = read_state_dict(&file).unwrap();
        assert_eq!(got.len(), 1);
        let w = &got["w"];
        assert_eq!((w.dtype, w.shape.clone()), ("F32", vec![3, 2]));
        assert_eq!(w.data, floats(&[0., 3., 1., 4., 2., 5.]));
    }

    #[test]
    fn code_and_unknown_globals_are_refused_by_name() {
        let system = b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwned\x85R.".to_vec();
        let msg = read_state_dict(&zip(&[("archive/data.pkl", &system)])).unwrap_err().to_string();
        assert!(msg.contains("global os.system") && msg.contains("without running"), "{msg}");
        // STACK_GLOBAL spelling of the same thing.
        let stacked = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.".to_vec();
        let msg = read_state_dict(&zip(&[("a/data.pkl", &stacked)])).unwrap_err().to_string();
        assert!(msg.contains("global builtins.eval"), "{msg}");
        // An opcode reconstruction never uses (INST, which calls a class).
        let inst = b"\x80\x02(ios\nsystem\n.".to_vec();
        let msg = read_state_dict(&zip(&[("a/data.pkl", &inst)])).unwrap_err().to_string();
        assert!(msg.contains("opcode 'i'"), "{msg}");
        // A storage class called like a function.
        let call = b"\x80\x02ctorch\nFloatStorage\n)R.".to_vec();
        assert!(read_state_dict(&zip(&[("a/data.pkl", &call)])).unwrap_err().to_string().contains("storage class"));
    }

    #[test]
    fn damaged_files_are_refused_not_panicked_on() {
        let file = zip(&[("archive/data.pkl", &transposed_pickle()), ("archive/data/0", &floats(&[0., 1.]))]);
        assert!(read_state_dict(&file).unwrap_err().to_string().contains("storage has 8 bytes"));
        let whole = zip(&[("archive/data.pkl", &transposed_pickle()), ("archive/data/0", &floats(&[0.; 6]))]);
        for cut in [0, 10, whole.len() / 2, whole.len() - 3] {
            let _ = read_state_dict(&whole[..cut]);
        }
        let pkl = transposed_pickle();
        for cut in 0..pkl.len() {
            assert!(read_state_dict(&zip(&[("archive/data.pkl", &pkl[..cut])])).is_err());
        }
        assert!(read_state_dict(b"\x80\x02}.").unwrap_err().to_string().contains("legacy"));
    }
}
