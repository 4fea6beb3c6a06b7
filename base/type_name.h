// File: base/type_name.h
//
// ReadableTypeName: a C++ type's name for messages, demangled, without the "ember::" and
// "(anonymous namespace)::" qualifiers ("EarlyStopping", "Accuracy"). The mangled name when
// demangling fails. Thread-safe.
#ifndef EMBER_BASE_TYPE_NAME_H_
#define EMBER_BASE_TYPE_NAME_H_

#include <string>
#include <typeinfo>

namespace ember {

std::string ReadableTypeName(const std::type_info& type);

}  // namespace ember

#endif  // EMBER_BASE_TYPE_NAME_H_
