#include "base/type_name.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace ember {

namespace {

// The demangled name, or `mangled` itself when it does not demangle.
std::string Demangle(const char* mangled) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
  std::free(demangled);
  return name;
}

}  // namespace

std::string ReadableTypeName(const std::type_info& type) {
  std::string name = Demangle(type.name());
  for (const std::string noise : {"ember::", "(anonymous namespace)::"}) {
    for (size_t at = name.find(noise); at != std::string::npos; at = name.find(noise)) name.erase(at, noise.size());
  }
  return name;
}

std::string ShortCallableTypeName(const std::type_info& type) {
  const std::string full = ReadableTypeName(type);
  std::string out, inside;  // `inside`: the outermost parentheses' content, dropped unless "*"
  out.reserve(full.size());
  int depth = 0;
  for (char c : full) {
    if (c == '(') {
      if (depth++ == 0) {
        out += '(';
        inside.clear();
        continue;
      }
    } else if (c == ')' && depth > 0 && --depth == 0) {
      if (inside == "*") out += '*';  // a function pointer type: "double (*)()"
      out += ')';
      continue;
    }
    if (depth == 0) {
      out += c;
    } else {
      inside += c;
    }
  }
  return out;
}

namespace {

// The load address of the main program (the first object dl_iterate_phdr visits).
const void* MainProgramBase() {
  static const void* const base = [] {
    const void* found = nullptr;
    dl_iterate_phdr(
        [](struct dl_phdr_info* info, size_t, void* out) {
          // dladdr's dli_fbase is the address of the object's first loaded segment.
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            if (info->dlpi_phdr[i].p_type == PT_LOAD) {
              *static_cast<const void**>(out) =
                  reinterpret_cast<const void*>(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
              break;
            }
          }
          return 1;  // the first object only
        },
        &found);
    return found;
  }();
  return base;
}

}  // namespace

std::string FunctionAddressName(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "<function>";
  if (info.dli_sname != nullptr && info.dli_saddr == address) return Demangle(info.dli_sname);
  // The main program is named by nothing: dladdr reports it as argv[0], which differs between
  // ranks that start one binary by different paths or names (a symlink, a per-node copy). A shared
  // library by its file name, which its loader resolved the same way on every rank.
  std::string module;
  if (info.dli_fbase != MainProgramBase()) {
    module = info.dli_fname;
    if (size_t slash = module.rfind('/'); slash != std::string::npos) module.erase(0, slash + 1);
  }
  char offset[32];
  std::snprintf(offset, sizeof(offset), "+0x%jx",
                static_cast<uintmax_t>(reinterpret_cast<uintptr_t>(address) -
                                       reinterpret_cast<uintptr_t>(info.dli_fbase)));
  return module + offset;
}

}  // namespace ember
