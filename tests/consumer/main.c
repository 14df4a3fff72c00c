#include <dsv4/dsv4.h>
#include <stdio.h>

int main(int argc, char **argv) {
    dsv4_model *model = NULL;
    dsv4_model_info info;
    if (argc < 2 || dsv4_model_load(argv[1], NULL, &model) != DSV4_OK) {
        fprintf(stderr, "load failed: %s\n", dsv4_last_error_message());
        return 1;
    }
    info.struct_size = sizeof info;
    if (dsv4_model_get_info(model, &info) != DSV4_OK) return 1;
    printf("consumer: dsv4 %s, %d layers\n", dsv4_version_string(), (int)info.n_layers);
    dsv4_model_free(model);
    return 0;
}
