# Purgatory for imashard's kexec_load of an x86_64 bzImage.
#
# The kernel's kexec code jumps here in 64-bit mode on identity-mapped page
# tables, with interrupts off, but without a GDT that the 64-bit boot
# protocol asks for (Documentation/arch/x86/boot.rst, "64-bit Boot
# Protocol") and without the zero page address in %rsi. This code loads a
# GDT with flat segments at the boot protocol's selectors __BOOT_CS (0x10)
# and __BOOT_DS (0x18), sets the segment registers, puts the zero page
# address in %rsi and jumps to the kernel's 64-bit entry point.
#
# The loader copies the assembled bytes (purgatoryCode in purgatory_amd64.go)
# into one page and writes the two addresses into boot_params_address and
# kernel_entry. The code is position independent, so the page may sit
# anywhere. TestPurgatoryMatchesSource reassembles this file with
#   as --64 -o purgatory.o purgatory_amd64.S
#   objcopy -O binary -j .text purgatory.o purgatory.bin
# and compares the result with purgatoryCode. Every alignment gives an
# explicit fill byte, because assemblers pick different NOP encodings.

	.text
	.code64
	.globl	purgatory_start
purgatory_start:
	jmp	setup

	.balign	8, 0
boot_params_address:		# written by the loader: the zero page
	.quad	0
kernel_entry:			# written by the loader: load address + 0x200
	.quad	0

gdt_descriptor:			# limit, then base (filled in at run time)
	.word	gdt_end - gdt - 1
	.quad	0

	.balign	8, 0
gdt:
	.quad	0			# 0x00: null descriptor
	.quad	0			# 0x08: unused
	.quad	0x00af9a000000ffff	# 0x10: __BOOT_CS, 64-bit code, execute/read
	.quad	0x00cf92000000ffff	# 0x18: __BOOT_DS, 4 GiB flat data, read/write
gdt_end:

setup:
	cli
	cld
	leaq	stack_end(%rip), %rsp

	# lgdt needs the absolute address of the table, which depends on
	# where the loader placed this page.
	leaq	gdt(%rip), %rax
	movq	%rax, gdt_descriptor+2(%rip)
	lgdt	gdt_descriptor(%rip)

	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	# A far return is the way to load CS in 64-bit mode.
	leaq	reloaded(%rip), %rax
	pushq	$0x10
	pushq	%rax
	lretq

reloaded:
	movq	boot_params_address(%rip), %rsi
	movq	kernel_entry(%rip), %rax
	jmpq	*%rax

	# Stack for the far return; the kernel sets up its own before it
	# pushes anything.
	.balign	16, 0
	.skip	64, 0
stack_end:
