/* Write to an address no VMA covers: the kernel answers with SIGSEGV (SEGV_MAPERR). */
int main(void) {
    volatile char *p = (volatile char *)0x10;
    *p = 1;
    return 0;
}
