/* simple.c: load a checkpoint, chat-encode one user message, and stream a sampled reply.
 * Pure C99 against the public header.
 * Usage: dsv4_simple_c MODEL_DIR [TOKENIZER_JSON] [N_PREDICT]
 * TOKENIZER_JSON defaults to MODEL_DIR/tokenizer.json. */
#include <dsv4/dsv4.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(dsv4_status status) {
    fprintf(stderr, "error: %s: %s\n", dsv4_status_name(status), dsv4_last_error_message());
    return 1;
}

static int print_piece(int32_t token, const char *text, size_t len, void *user_data) {
    (void)token;
    (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 1; /* keep going */
}

int main(int argc, char **argv) {
    dsv4_model *model = NULL;
    dsv4_tokenizer *own_tok = NULL;
    const dsv4_tokenizer *tok;
    dsv4_context *ctx = NULL;
    dsv4_sampler *sampler = NULL;
    dsv4_model_info info;
    dsv4_sampler_params sp = dsv4_sampler_default_params();
    dsv4_generate_params gp = dsv4_generate_default_params();
    dsv4_generate_stats stats;
    char prompt[4096];
    int32_t ids[4096];
    size_t prompt_len = 0, n_ids = 0;
    dsv4_status st;
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [TOKENIZER_JSON] [N_PREDICT]\n", argv[0]);
        return 2;
    }
    printf("dsv4 %s (api %d)\n", dsv4_version_string(), (int)dsv4_api_version());
    if ((st = dsv4_model_load(argv[1], NULL, &model)) != DSV4_OK) return fail(st);
    info.struct_size = sizeof info;
    if ((st = dsv4_model_get_info(model, &info)) != DSV4_OK) goto done;
    printf("%s: %d layers, dim %d, %d experts\n", info.name, (int)info.n_layers, (int)info.dim,
           (int)info.n_routed_experts);
    tok = dsv4_model_tokenizer(model);
    if (argc > 2) {
        if ((st = dsv4_tokenizer_load(argv[2], &own_tok)) != DSV4_OK) goto done;
        tok = own_tok;
    }
    /* The official chat format; the prompt ends where the assistant's reply begins. */
    if ((st = dsv4_chat_encode("[{\"role\": \"user\", \"content\": \"Hello! Who are you?\"}]", NULL, prompt,
                               sizeof prompt, &prompt_len)) != DSV4_OK)
        goto done;
    if ((st = dsv4_tokenize(tok, prompt, prompt_len, ids, sizeof ids / sizeof ids[0], &n_ids)) != DSV4_OK) goto done;
    printf("prompt: %d tokens\n", (int)n_ids);
    if ((st = dsv4_context_create(model, NULL, &ctx)) != DSV4_OK) goto done;
    sp.temperature = 0.7f;
    sp.seed = 42; /* the same seed gives the same reply */
    if ((st = dsv4_sampler_create(&sp, &sampler)) != DSV4_OK) goto done;
    gp.max_tokens = argc > 3 ? atoi(argv[3]) : 16;
    stats.struct_size = sizeof stats;
    printf("assistant: ");
    st = dsv4_generate(ctx, sampler, tok, 0, ids, (int32_t)n_ids, &gp, print_piece, NULL, &stats);
    if (st == DSV4_OK)
        printf("\n%lld tokens, prefill %.1f tokens/s, decode %.1f tokens/s\n", (long long)stats.n_generated,
               stats.prefill_tokens_per_second, stats.decode_tokens_per_second);
done:
    if (st != DSV4_OK) fail(st);
    dsv4_sampler_free(sampler);
    dsv4_context_free(ctx);
    dsv4_tokenizer_free(own_tok);
    dsv4_model_free(model);
    return st == DSV4_OK ? 0 : 1;
}
