/* simple.c: load a checkpoint, evaluate a prompt of token ids, and print the greedy continuation.
 * Pure C99 against the public header. Usage: dsv4_simple_c MODEL_DIR [N_PREDICT] */
#include <dsv4/dsv4.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(dsv4_status status) {
    fprintf(stderr, "error: %s: %s\n", dsv4_status_name(status), dsv4_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    dsv4_model *model = NULL;
    dsv4_context *ctx = NULL;
    dsv4_model_info info;
    dsv4_status st;
    int32_t token = 0, i, n_predict = argc > 2 ? atoi(argv[2]) : 8;
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [N_PREDICT]\n", argv[0]);
        return 2;
    }
    printf("dsv4 %s (api %d)\n", dsv4_version_string(), (int)dsv4_api_version());
    if ((st = dsv4_model_load(argv[1], NULL, &model)) != DSV4_OK) return fail(st);
    info.struct_size = sizeof info;
    if ((st = dsv4_model_get_info(model, &info)) != DSV4_OK) return fail(st);
    printf("%s: %d layers, dim %d, %d experts\n", info.name, (int)info.n_layers, (int)info.dim,
           (int)info.n_routed_experts);
    if ((st = dsv4_context_create(model, NULL, &ctx)) != DSV4_OK) {
        dsv4_model_free(model);
        return fail(st);
    }
    for (i = 0; i < n_predict; ++i) {
        const float *logits;
        int32_t n_vocab, v, best = 0;
        dsv4_batch batch = dsv4_batch_for_sequence(&token, 1, 0);
        if ((st = dsv4_decode(ctx, &batch)) != DSV4_OK) break;
        if ((st = dsv4_get_logits(ctx, -1, &logits, &n_vocab)) != DSV4_OK) break;
        for (v = 1; v < n_vocab; ++v)
            if (logits[v] > logits[best]) best = v;
        printf("%d ", (int)best);
        token = best;
    }
    printf("\n");
    dsv4_context_free(ctx);
    dsv4_model_free(model);
    return st == DSV4_OK ? 0 : fail(st);
}
