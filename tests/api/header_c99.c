/* Compiled as C99 with -pedantic -Werror: the public header must be plain C. */
#include <dsv4/dsv4.h>

int dsv4_test_header_c99(void);
int dsv4_test_header_c99(void) {
    dsv4_model_params mp = dsv4_model_default_params();
    dsv4_context_params cp = dsv4_context_default_params();
    int32_t token = 0;
    dsv4_batch b = dsv4_batch_for_sequence(&token, 1, 0);
    return (int)(mp.struct_size == sizeof mp && cp.struct_size == sizeof cp && b.struct_size == sizeof b &&
                 DSV4_STATUS_PRIMARY(DSV4_ERR_WEIGHTS_SHAPE) == DSV4_ERR_WEIGHTS);
}
