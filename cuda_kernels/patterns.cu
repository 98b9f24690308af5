// Bit-packing and hashing of activation patterns, one thread per pattern row.
//
// bits:    (n_rows, n_bits) bytes, 0 or 1 (a torch bool tensor, row-major)
// packed:  (n_rows, ceil(n_bits / 8)) bytes; bit k of byte j is bits[8 j + k], most significant
//          bit first (numpy.packbits order), the last byte zero-padded
// hashes:  (n_rows,) 64-bit FNV-1a over the packed bytes
//
// The torch fallback in gpuopt/kernels/patterns.py computes the same bytes and hashes.

extern "C" __global__ void pack_and_hash(const unsigned char* __restrict__ bits, long long n_rows,
                                         long long n_bits, unsigned char* __restrict__ packed,
                                         unsigned long long* __restrict__ hashes) {
    long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= n_rows) return;
    long long n_bytes = (n_bits + 7) / 8;
    const unsigned char* src = bits + row * n_bits;
    unsigned char* dst = packed + row * n_bytes;
    unsigned long long h = 14695981039346656037ULL;
    for (long long j = 0; j < n_bytes; ++j) {
        unsigned int byte = 0;
        for (int k = 0; k < 8; ++k) {
            long long i = j * 8 + k;
            if (i < n_bits && src[i] != 0) byte |= 0x80u >> k;
        }
        dst[j] = (unsigned char)byte;
        h ^= (unsigned long long)byte;
        h *= 1099511628211ULL;
    }
    hashes[row] = h;
}
