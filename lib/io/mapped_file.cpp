#include "io/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

namespace dsv4::io {
namespace {
struct Fd {
    int fd;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};
[[noreturn]] void fail_errno(const std::string &path, const char *what) {
    int err = errno;
    fail(err == ENOENT ? DSV4_ERR_IO_NOT_FOUND : DSV4_ERR_IO_READ, "{}: cannot {}: {}", path, what,
         std::strerror(err));
}
}  // namespace

MappedFile::MappedFile(const std::string &path, bool use_mmap) : path_(path) {
    Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (f.fd < 0) fail_errno(path, "open");
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) fail_errno(path, "stat");
    if (!S_ISREG(st.st_mode)) fail(DSV4_ERR_IO_READ, "{}: not a regular file", path);
    size_ = size_t(st.st_size);
    if (size_ == 0) return;
    if (use_mmap) {
        void *p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, f.fd, 0);
        if (p == MAP_FAILED) fail_errno(path, "mmap");
        map_ = p;
        map_bytes_ = size_;
        data_ = static_cast<const uint8_t *>(p);
        return;
    }
    buffer_ = core::HugeBuffer(size_, path);
    uint8_t *buffer = buffer_.data();
    size_t done = 0;
    while (done < size_) {
        ssize_t n = ::pread(f.fd, buffer + done, size_ - done, off_t(done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail_errno(path, "read");
        done += size_t(n);
    }
    data_ = buffer;
}

MappedFile::~MappedFile() {
    if (map_) ::munmap(map_, map_bytes_);
}

std::string read_text_file(const std::string &path) {
    MappedFile f(path, false);
    return std::string(reinterpret_cast<const char *>(f.data()), f.size());
}

std::string base_name(const std::string &path) {
    size_t slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace dsv4::io
