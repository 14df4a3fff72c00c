// The registry of devices: the spec a user names ("cpu", "cuda:N") to the device object, and the query of what
// this build and machine offer.
#include <fmt/format.h>

#include <charconv>

#include "backend/backend.h"
#include "backend/cpu/isa.h"
#include "core/error.h"
#ifdef DSV4_HAVE_CUDA
#include "backend/cuda/backend.h"
#endif

namespace dsv4::backend {

std::unique_ptr<Device> make_device(const std::string &spec) {
    if (spec.empty() || spec == "cpu") return make_cpu_device();
    if (spec.rfind("cuda", 0) == 0) {
        int index = 0;
        if (spec.size() > 4) {
            const char *first = spec.data() + 5, *last = spec.data() + spec.size();
            const auto [end, ec] = std::from_chars(first, last, index);
            if (spec[4] != ':' || first == last || ec != std::errc() || end != last || index < 0)
                fail(DSV4_ERR_INVALID_ARGUMENT, "device '{}': expected cuda or cuda:N with N a device index", spec);
        }
#ifdef DSV4_HAVE_CUDA
        return cuda::make_cuda_device(index);
#else
        fail(DSV4_ERR_UNSUPPORTED, "device '{}': this build of dsv4 has no CUDA backend (configure with -DDSV4_CUDA=ON)",
             spec);
#endif
    }
    fail(DSV4_ERR_INVALID_ARGUMENT, "device '{}': expected cpu, cuda or cuda:N", spec);
}

std::vector<DeviceDescription> available_devices() {
    std::vector<DeviceDescription> out{{"cpu", std::string("cpu-") + cpu::isa_name(cpu::selected_isa()), 0}};
#ifdef DSV4_HAVE_CUDA
    for (int i = 0, n = cuda::device_count(); i < n; ++i) {
        cuda::DeviceInfo info;
        try {
            info = cuda::device_info(i);
        } catch (const Error &) {
            continue;  // a GPU the driver cannot query is no choice
        }
        out.push_back({fmt::format("cuda:{}", i),
                       fmt::format("{} (sm_{}{}, {:.1f} GiB)", info.name, info.major, info.minor,
                                   double(info.total_bytes) / double(1ull << 30)),
                       info.total_bytes});
    }
#endif
    return out;
}

std::vector<std::string> compiled_backends() {
#ifdef DSV4_HAVE_CUDA
    return {"cpu", "cuda"};
#else
    return {"cpu"};
#endif
}

}  // namespace dsv4::backend
