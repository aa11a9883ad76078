/*
 * TEST SCAFFOLDING ONLY - never ship this beside a real Windows install.
 *
 * Rust's standard library (1.78+) gets random bytes from ProcessPrng in
 * bcryptprimitives.dll. Real Windows 10/11 has it; Debian's Wine 8 has no
 * bcryptprimitives.dll at all, so rayvault-worker.exe fails to load under
 * Wine with "Library bcryptprimitives.dll ... not found" (status c0000135).
 *
 * This stand-in DLL, placed beside the .exe as bcryptprimitives.dll, exports
 * ProcessPrng and forwards to BCryptGenRandom with the system-preferred RNG,
 * which Wine implements. Built by scripts/wine_smoke.sh with mingw-w64.
 */
#include <windows.h>
#include <bcrypt.h>

/* Same contract as the real function: fill the buffer, return TRUE. */
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
