//! The protobuf codec of every Sigil gRPC service: tonic's prost codec with
//! an encoding buffer that starts empty. tonic's default 8 KiB buffer lives
//! as long as a stream does, and the Workload API keeps one stream per
//! workload open for hours: that buffer was half of what each open stream
//! cost the agent. Messages are a few KiB; the buffer grows to what one
//! needs when it is encoded.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes the encoder batches before yielding a chunk of a stream: tonic's
/// default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with an encoding buffer allocated on first use.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(0, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}
