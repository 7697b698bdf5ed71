//go:build amd64 && !purego

#include "textflag.h"

// The SHA-256 round constants K[0..63] (FIPS 180-4, section 4.2.2).
DATA k256<>+0(SB)/4, $0x428a2f98
DATA k256<>+4(SB)/4, $0x71374491
DATA k256<>+8(SB)/4, $0xb5c0fbcf
DATA k256<>+12(SB)/4, $0xe9b5dba5
DATA k256<>+16(SB)/4, $0x3956c25b
DATA k256<>+20(SB)/4, $0x59f111f1
DATA k256<>+24(SB)/4, $0x923f82a4
DATA k256<>+28(SB)/4, $0xab1c5ed5
DATA k256<>+32(SB)/4, $0xd807aa98
DATA k256<>+36(SB)/4, $0x12835b01
DATA k256<>+40(SB)/4, $0x243185be
DATA k256<>+44(SB)/4, $0x550c7dc3
DATA k256<>+48(SB)/4, $0x72be5d74
DATA k256<>+52(SB)/4, $0x80deb1fe
DATA k256<>+56(SB)/4, $0x9bdc06a7
DATA k256<>+60(SB)/4, $0xc19bf174
DATA k256<>+64(SB)/4, $0xe49b69c1
DATA k256<>+68(SB)/4, $0xefbe4786
DATA k256<>+72(SB)/4, $0x0fc19dc6
DATA k256<>+76(SB)/4, $0x240ca1cc
DATA k256<>+80(SB)/4, $0x2de92c6f
DATA k256<>+84(SB)/4, $0x4a7484aa
DATA k256<>+88(SB)/4, $0x5cb0a9dc
DATA k256<>+92(SB)/4, $0x76f988da
DATA k256<>+96(SB)/4, $0x983e5152
DATA k256<>+100(SB)/4, $0xa831c66d
DATA k256<>+104(SB)/4, $0xb00327c8
DATA k256<>+108(SB)/4, $0xbf597fc7
DATA k256<>+112(SB)/4, $0xc6e00bf3
DATA k256<>+116(SB)/4, $0xd5a79147
DATA k256<>+120(SB)/4, $0x06ca6351
DATA k256<>+124(SB)/4, $0x14292967
DATA k256<>+128(SB)/4, $0x27b70a85
DATA k256<>+132(SB)/4, $0x2e1b2138
DATA k256<>+136(SB)/4, $0x4d2c6dfc
DATA k256<>+140(SB)/4, $0x53380d13
DATA k256<>+144(SB)/4, $0x650a7354
DATA k256<>+148(SB)/4, $0x766a0abb
DATA k256<>+152(SB)/4, $0x81c2c92e
DATA k256<>+156(SB)/4, $0x92722c85
DATA k256<>+160(SB)/4, $0xa2bfe8a1
DATA k256<>+164(SB)/4, $0xa81a664b
DATA k256<>+168(SB)/4, $0xc24b8b70
DATA k256<>+172(SB)/4, $0xc76c51a3
DATA k256<>+176(SB)/4, $0xd192e819
DATA k256<>+180(SB)/4, $0xd6990624
DATA k256<>+184(SB)/4, $0xf40e3585
DATA k256<>+188(SB)/4, $0x106aa070
DATA k256<>+192(SB)/4, $0x19a4c116
DATA k256<>+196(SB)/4, $0x1e376c08
DATA k256<>+200(SB)/4, $0x2748774c
DATA k256<>+204(SB)/4, $0x34b0bcb5
DATA k256<>+208(SB)/4, $0x391c0cb3
DATA k256<>+212(SB)/4, $0x4ed8aa4a
DATA k256<>+216(SB)/4, $0x5b9cca4f
DATA k256<>+220(SB)/4, $0x682e6ff3
DATA k256<>+224(SB)/4, $0x748f82ee
DATA k256<>+228(SB)/4, $0x78a5636f
DATA k256<>+232(SB)/4, $0x84c87814
DATA k256<>+236(SB)/4, $0x8cc70208
DATA k256<>+240(SB)/4, $0x90befffa
DATA k256<>+244(SB)/4, $0xa4506ceb
DATA k256<>+248(SB)/4, $0xbef9a3f7
DATA k256<>+252(SB)/4, $0xc67178f2
GLOBL k256<>(SB), RODATA|NOPTR, $256

// PSHUFB masks: bswap32 reverses the bytes of each 32-bit lane, bswap128
// the bytes of the whole register.
DATA bswap32<>+0(SB)/8, $0x0405060700010203
DATA bswap32<>+8(SB)/8, $0x0c0d0e0f08090a0b
GLOBL bswap32<>(SB), RODATA|NOPTR, $16
DATA bswap128<>+0(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap128<>+8(SB)/8, $0x0001020304050607
GLOBL bswap128<>(SB), RODATA|NOPTR, $16

// LOADBLOCK loads the 64-byte block at SI into X3..X6 as 32-bit big-endian
// words, in the lane order that the byte mask in X8 sets.
#define LOADBLOCK \
	MOVOU 0(SI), X3; \
	PSHUFB X8, X3; \
	MOVOU 16(SI), X4; \
	PSHUFB X8, X4; \
	MOVOU 32(SI), X5; \
	PSHUFB X8, X5; \
	MOVOU 48(SI), X6; \
	PSHUFB X8, X6

// ROUNDS256 runs SHA-256 rounds koff/4 to koff/4+3 on the state in X1
// (A,B,E,F from the high lane down) and X2 (C,D,G,H), with the message words
// in msg. SHA256RNDS2 runs two rounds with W+K taken from the low half of X0
// and leaves the new A,B,E,F in its destination, so the two registers swap
// roles between the two instructions.
#define ROUNDS256(msg, koff) \
	MOVOU koff(AX), X0; \
	PADDL msg, X0; \
	SHA256RNDS2 X0, X1, X2; \
	PSHUFD $0x0E, X0, X0; \
	SHA256RNDS2 X0, X2, X1

// SCHEDULE256 replaces m0, the words W[t-16..t-13], with W[t..t+3], given
// m1 = W[t-12..t-9], m2 = W[t-8..t-5] and m3 = W[t-4..t-1].
#define SCHEDULE256(m0, m1, m2, m3) \
	SHA256MSG1 m1, m0; \
	MOVO m3, X12; \
	PALIGNR $4, m2, X12; \
	PADDL X12, m0; \
	SHA256MSG2 m3, m0

// func block256(h *[8]uint32, p []byte)
TEXT ·block256(SB), NOSPLIT, $0-32
	MOVQ h+0(FP), DI
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), DX
	SHRQ $6, DX
	JZ done256
	MOVOU bswap32<>(SB), X8
	LEAQ k256<>(SB), AX

	// h holds A..H from the low lane up; SHA256RNDS2 wants A,B,E,F and
	// C,D,G,H, each from the high lane down.
	MOVOU (DI), X7
	MOVOU 16(DI), X2
	PSHUFD $0xB1, X7, X7
	PSHUFD $0x1B, X2, X2
	MOVO X7, X1
	PALIGNR $8, X2, X1
	PBLENDW $0xF0, X7, X2

loop256:
	MOVO X1, X9
	MOVO X2, X10

	LOADBLOCK

	ROUNDS256(X3, 0)
	ROUNDS256(X4, 16)
	ROUNDS256(X5, 32)
	ROUNDS256(X6, 48)
	SCHEDULE256(X3, X4, X5, X6)
	ROUNDS256(X3, 64)
	SCHEDULE256(X4, X5, X6, X3)
	ROUNDS256(X4, 80)
	SCHEDULE256(X5, X6, X3, X4)
	ROUNDS256(X5, 96)
	SCHEDULE256(X6, X3, X4, X5)
	ROUNDS256(X6, 112)
	SCHEDULE256(X3, X4, X5, X6)
	ROUNDS256(X3, 128)
	SCHEDULE256(X4, X5, X6, X3)
	ROUNDS256(X4, 144)
	SCHEDULE256(X5, X6, X3, X4)
	ROUNDS256(X5, 160)
	SCHEDULE256(X6, X3, X4, X5)
	ROUNDS256(X6, 176)
	SCHEDULE256(X3, X4, X5, X6)
	ROUNDS256(X3, 192)
	SCHEDULE256(X4, X5, X6, X3)
	ROUNDS256(X4, 208)
	SCHEDULE256(X5, X6, X3, X4)
	ROUNDS256(X5, 224)
	SCHEDULE256(X6, X3, X4, X5)
	ROUNDS256(X6, 240)

	PADDL X9, X1
	PADDL X10, X2
	ADDQ $64, SI
	DECQ DX
	JNZ loop256

	PSHUFD $0x1B, X1, X1
	PSHUFD $0xB1, X2, X2
	MOVO X1, X7
	PBLENDW $0xF0, X2, X7
	PALIGNR $8, X1, X2
	MOVOU X7, (DI)
	MOVOU X2, 16(DI)

done256:
	RET

// ROUNDS1 runs SHA-1 rounds 4g to 4g+3, for g >= 1, with round function f.
// On entry src holds A,B,C,D from before group g-1, and SHA1NEXTE turns it
// into the group's message words with E added to the first. save receives
// the state before these rounds, for group g+1.
#define ROUNDS1(msg, src, save, f) \
	SHA1NEXTE msg, src; \
	MOVO X1, save; \
	SHA1RNDS4 $f, src, X1

// SCHEDULE1 replaces m0, the words W[t-16..t-13], with W[t..t+3], given
// m1 = W[t-12..t-9], m2 = W[t-8..t-5] and m3 = W[t-4..t-1].
#define SCHEDULE1(m0, m1, m2, m3) \
	SHA1MSG1 m1, m0; \
	PXOR m2, m0; \
	SHA1MSG2 m3, m0

// func block1(h *[5]uint32, p []byte)
TEXT ·block1(SB), NOSPLIT, $0-32
	MOVQ h+0(FP), DI
	MOVQ p_base+8(FP), SI
	MOVQ p_len+16(FP), DX
	SHRQ $6, DX
	JZ done1
	MOVOU bswap128<>(SB), X8

	// SHA1RNDS4 wants A,B,C,D from the high lane down, and E alone in the
	// high lane of another register.
	MOVOU (DI), X1
	PSHUFD $0x1B, X1, X1
	PXOR X2, X2
	PINSRD $3, 16(DI), X2

loop1:
	MOVO X1, X9
	MOVO X2, X10

	LOADBLOCK

	MOVO X1, X11
	PADDL X3, X2
	SHA1RNDS4 $0, X2, X1
	ROUNDS1(X4, X11, X12, 0)
	ROUNDS1(X5, X12, X11, 0)
	ROUNDS1(X6, X11, X12, 0)
	SCHEDULE1(X3, X4, X5, X6)
	ROUNDS1(X3, X12, X11, 0)
	SCHEDULE1(X4, X5, X6, X3)
	ROUNDS1(X4, X11, X12, 1)
	SCHEDULE1(X5, X6, X3, X4)
	ROUNDS1(X5, X12, X11, 1)
	SCHEDULE1(X6, X3, X4, X5)
	ROUNDS1(X6, X11, X12, 1)
	SCHEDULE1(X3, X4, X5, X6)
	ROUNDS1(X3, X12, X11, 1)
	SCHEDULE1(X4, X5, X6, X3)
	ROUNDS1(X4, X11, X12, 1)
	SCHEDULE1(X5, X6, X3, X4)
	ROUNDS1(X5, X12, X11, 2)
	SCHEDULE1(X6, X3, X4, X5)
	ROUNDS1(X6, X11, X12, 2)
	SCHEDULE1(X3, X4, X5, X6)
	ROUNDS1(X3, X12, X11, 2)
	SCHEDULE1(X4, X5, X6, X3)
	ROUNDS1(X4, X11, X12, 2)
	SCHEDULE1(X5, X6, X3, X4)
	ROUNDS1(X5, X12, X11, 2)
	SCHEDULE1(X6, X3, X4, X5)
	ROUNDS1(X6, X11, X12, 3)
	SCHEDULE1(X3, X4, X5, X6)
	ROUNDS1(X3, X12, X11, 3)
	SCHEDULE1(X4, X5, X6, X3)
	ROUNDS1(X4, X11, X12, 3)
	SCHEDULE1(X5, X6, X3, X4)
	ROUNDS1(X5, X12, X11, 3)
	SCHEDULE1(X6, X3, X4, X5)
	ROUNDS1(X6, X11, X12, 3)

	// E after the last four rounds comes from the A saved before them.
	SHA1NEXTE X10, X12
	MOVO X12, X2
	PADDL X9, X1
	ADDQ $64, SI
	DECQ DX
	JNZ loop1

	PSHUFD $0x1B, X1, X1
	MOVOU X1, (DI)
	PEXTRD $3, X2, 16(DI)

done1:
	RET

// func cpuid(leaf, subleaf uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL subleaf+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET
