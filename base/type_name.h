// File: base/type_name.h
//
// ReadableTypeName: a C++ type's name for messages, demangled, without the "ember::" and
// "(anonymous namespace)::" qualifiers ("EarlyStopping", "Accuracy"). The mangled name when
// demangling fails.
//
// CallableName: what a std::function holds, named so that two processes running the same binary
// name the same callable alike and different callables differently (the ranks compare it in the
// layout they agree on: two score functions or two event filters are told apart). A lambda or
// functor is named by its type with argument lists elided ("Run()::{lambda()#2}": the enclosing
// function and the lambda's number there); a plain function pointer by its symbol when the
// dynamic symbol table has it, else by its offset in the main program ("+0x1a2b0") or its shared
// library and offset ("libtrainer.so+0x2b0"): the same in every process of one binary whatever
// its load address or the path it was started by; "<empty>" for an empty one.
// Limits: named alike are one lambda or functor type holding different captured state, overloads
// or same-named functions of different files whose lambdas have the same number, and function
// pointers of a type not tried (see below). Two builds of one source name a lambda alike but may
// place a function elsewhere (ranks must run one binary).
//
// Thread-safe.
#ifndef EMBER_BASE_TYPE_NAME_H_
#define EMBER_BASE_TYPE_NAME_H_

#include <functional>
#include <string>
#include <typeinfo>

namespace ember {

std::string ReadableTypeName(const std::type_info& type);

// The name of the function at `address` (see CallableName).
std::string FunctionAddressName(const void* address);

// ReadableTypeName with every parenthesized argument list emptied: "f()::{lambda()#2}".
std::string ShortCallableTypeName(const std::type_info& type);

// `Pointers`: further function pointer types the slot may hold besides its own signature (a
// std::function<Score(const Engine&)> holding a double (*)(const Engine&)); a function pointer of
// a type not tried is named by its type only ("double (*)()").
template <typename... Pointers, typename R, typename... Args>
std::string CallableName(const std::function<R(Args...)>& fn) {
  if (!fn) return "<empty>";
  const void* address = nullptr;
  auto try_type = [&]<typename P>() {
    if (address != nullptr) return;
    if (const P* pointer = fn.template target<P>(); pointer != nullptr) {
      address = reinterpret_cast<const void*>(*pointer);
    }
  };
  try_type.template operator()<R (*)(Args...)>();
  try_type.template operator()<R (*)(Args...) noexcept>();
  (try_type.template operator()<Pointers>(), ...);
  if (address != nullptr) return FunctionAddressName(address);
  return ShortCallableTypeName(fn.target_type());
}

}  // namespace ember

#endif  // EMBER_BASE_TYPE_NAME_H_
